"""Load a model file written by Julia (or Python), evaluate it, fine-tune it and save it again.

    python examples/load_finetune.py MODEL [--epochs 1] [--train-samples 60000] [--out finetuned.safetensors]

examples/train_and_save.jl writes such a file from Julia alone. Training continues exactly where it
stopped: the file carries the optimizer's velocities, its hyperparameters and the shuffling state.
"""

import argparse

import pyjlfa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=60000, help="fine-tune on the first N images")
    parser.add_argument("--out", default="finetuned.safetensors")
    args = parser.parse_args()

    meta = pyjlfa.io.read_metadata(args.model)
    print(f"{args.model}: written by {meta['created_by']}, {meta['rule']} {meta['chain']} {meta['dtype']}")
    net = pyjlfa.load(args.model)
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist(dtype=net.dtype)
    Xtr, ytr = Xtr[:args.train_samples], ytr[:args.train_samples]
    result = net.evaluate(Xte, yte)
    print(f"loaded after {net.epochs} epochs: test loss {result['loss']!r}, test accuracy {result['accuracy']!r}")

    optimizer = net.optimizer or pyjlfa.SGD(lr=0.05, momentum=0.9)
    net.fit(Xtr, ytr, epochs=args.epochs, batch_size=64, optimizer=optimizer)
    result = net.evaluate(Xte, yte)
    print(f"fine-tuned to {net.epochs} epochs: test loss {result['loss']!r}, test accuracy {result['accuracy']!r}")
    net.save(args.out, include_optimizer=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
