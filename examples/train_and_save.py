"""Train a feedback-alignment network on Fashion-MNIST in Python and save it for Julia.

    python examples/train_and_save.py [--epochs 2] [--train-samples 60000] [--out fashion_fa.safetensors]

The file holds the parameters, the fixed feedback matrices, the momentum velocities and the
state of the shuffling generator; examples/load_finetune.jl opens it in Julia (no Python needed),
evaluates it and trains it further. Read it back in Python with ``pyjlfa.load(path)``.
"""

import argparse

import pyjlfa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=60000, help="train on the first N images")
    parser.add_argument("--out", default="fashion_fa.safetensors")
    args = parser.parse_args()

    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist()
    Xtr, ytr = Xtr[:args.train_samples], ytr[:args.train_samples]
    net = pyjlfa.Network([784, 128, 10], activation="tanh", rule="fa", seed=0)
    net.fit(Xtr, ytr, epochs=args.epochs, batch_size=64, optimizer=pyjlfa.SGD(lr=0.05, momentum=0.9))
    result = net.evaluate(Xte, yte)
    print(f"trained {net.epochs} epochs on {len(Xtr)} images: test loss {result['loss']!r}, "
          f"test accuracy {result['accuracy']!r}")
    net.save(args.out, include_optimizer=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
