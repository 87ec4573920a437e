"""ResNet-20 (biotorch's small ResNet, 1 input channel) on Fashion-MNIST padded to 32 x 32, trained by a
rule without backpropagation: batch norm, skip connections and He et al.'s option-A shortcuts.

    python examples/resnet20.py --rule fa --epochs 1 --train-size 20000
"""

import argparse

import pyjlfa
from pyjlfa.experiments import resnet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="fa", help="bp, fa, dfa, usf, frsf, brsf, kp, ... (default fa)")
    parser.add_argument("--feedback-points", default="layer", choices=["layer", "block"],
                        help="for dfa, drtp and sdfa: where the projected error enters (default layer)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args(argv)
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist(images=True, pad=2)
    Xtr, ytr, Xte, yte = Xtr[:args.train_size], ytr[:args.train_size], Xte[:args.test_size], yte[:args.test_size]
    rule = args.rule
    if rule in ("dfa", "drtp", "sdfa") and args.feedback_points != "layer":
        rule = {"dfa": pyjlfa.rules.DFA, "drtp": pyjlfa.rules.DRTP, "sdfa": pyjlfa.rules.SDFA}[rule](args.feedback_points)
    net = pyjlfa.Network(resnet(20), input_shape=(1, 32, 32), rule=rule, seed=0)
    net.fit(Xtr, ytr, epochs=args.epochs, batch_size=128, validation_data=(Xte, yte), progress=True,
            optimizer=pyjlfa.SGD(args.lr, momentum=0.9, weight_decay=1e-4))
    print(f"{args.rule}: test accuracy {net.evaluate(Xte, yte)['accuracy']:.4f}")
    return net


if __name__ == "__main__":
    main()
