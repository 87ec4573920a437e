"""LeNet-5 on Fashion-MNIST (images standardised, zero-padded to 32 x 32), trained by one or more rules.

    python examples/lenet.py [--rules bp,fa,dfa] [--epochs 1] [--lr LR] [--train-size N]

The protocol of biotorch's LeNet table: SGD with momentum 0.9 and weight decay 1e-3, batch 64,
Xavier-uniform forward and feedback weights, each rule at the learning rate the reproduction's search
chose for it (pyjlfa.experiments.LENET_LR: one rate for all rules blows some of them up), or --lr for
all. Prints, per rule, the test accuracy after each epoch and the seconds the epoch took (training
only; the test pass is timed apart).
"""

import argparse
import time

import pyjlfa
from pyjlfa.experiments import LENET_LR, fashion_mnist_images, lenet5


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="bp,fa,dfa,usf,brsf,frsf,kp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="one rate for every rule (default: LENET_LR's per rule)")
    parser.add_argument("--train-size", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args()
    Xtr, ytr, Xte, yte = fashion_mnist_images(pad=2)
    if args.train_size:
        Xtr, ytr = Xtr[:args.train_size], ytr[:args.train_size]
    print(f"LeNet-5, Fashion-MNIST {len(Xtr)} training / {len(Xte)} test images, SGD momentum 0.9 "
          f"weight decay 1e-3, batch 64")
    print(f"{'rule':<6} {'lr':>7} {'epoch':>5} {'train loss':>10} {'test acc':>9} {'s/epoch':>8}")
    for rule in args.rules.split(","):
        lr = args.lr if args.lr is not None else LENET_LR[rule.lower()]
        net = pyjlfa.Network(lenet5(), input_shape=(1, 32, 32), rule=rule, seed=0)
        optimizer = pyjlfa.SGD(lr, momentum=0.9, weight_decay=1e-3)
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            h = net.fit(Xtr, ytr, epochs=1, batch_size=64, optimizer=optimizer)
            seconds = time.perf_counter() - start
            accuracy = net.evaluate(Xte, yte)["accuracy"]
            print(f"{rule:<6} {lr:>7g} {epoch:>5} {h['loss'][-1]:>10.4f} {accuracy:>9.4f} {seconds:>8.1f}", flush=True)
        net.close()


if __name__ == "__main__":
    main()
