"""LeNet-5 on Fashion-MNIST (images zero-padded to 32 x 32), trained by one or more rules.

    python examples/lenet.py [--rules bp,fa,dfa] [--epochs 1] [--lr 0.01] [--train-size N]

The protocol of biotorch's LeNet table: SGD with momentum 0.9 and weight decay 1e-3, batch 64,
Xavier-uniform forward and feedback weights. Prints, per rule, the test accuracy after each epoch
and the seconds the epoch took (training only; the test pass is timed apart).
"""

import argparse
import time

import pyjlfa
from pyjlfa.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU


def lenet5():
    return [Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
            Conv2d(16, 120, 5), ReLU(), Flatten(), Linear(120, 84), ReLU(), Linear(84, 10)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="bp,fa,dfa,usf,brsf,frsf,kp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--train-size", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args()
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist(images=True, pad=2)
    if args.train_size:
        Xtr, ytr = Xtr[:args.train_size], ytr[:args.train_size]
    print(f"LeNet-5, Fashion-MNIST {len(Xtr)} training / {len(Xte)} test images, SGD lr {args.lr} momentum 0.9 "
          f"weight decay 1e-3, batch 64")
    print(f"{'rule':<6} {'epoch':>5} {'train loss':>10} {'test acc':>9} {'s/epoch':>8}")
    for rule in args.rules.split(","):
        net = pyjlfa.Network(lenet5(), input_shape=(1, 32, 32), rule=rule, seed=0)
        optimizer = pyjlfa.SGD(args.lr, momentum=0.9, weight_decay=1e-3)
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            h = net.fit(Xtr, ytr, epochs=1, batch_size=64, optimizer=optimizer)
            seconds = time.perf_counter() - start
            accuracy = net.evaluate(Xte, yte)["accuracy"]
            print(f"{rule:<6} {epoch:>5} {h['loss'][-1]:>10.4f} {accuracy:>9.4f} {seconds:>8.1f}", flush=True)
        net.close()


if __name__ == "__main__":
    main()
