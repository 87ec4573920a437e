"""LeNet-5 on Fashion-MNIST (images zero-padded to 32 x 32), trained by any rule.

    python examples/lenet.py [--rule fa] [--epochs 1] [--lr 0.01]

The protocol of biotorch's LeNet table: SGD with momentum 0.9 and weight decay 1e-3, batch 64.
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
    parser.add_argument("--rule", default="fa")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist(images=True, pad=2)
    net = pyjlfa.Network(lenet5(), input_shape=(1, 32, 32), rule=args.rule, seed=0)
    print(net)
    optimizer = pyjlfa.SGD(args.lr, momentum=0.9, weight_decay=1e-3)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        h = net.fit(Xtr, ytr, epochs=1, batch_size=64, optimizer=optimizer, validation_data=(Xte, yte))
        print(f"epoch {epoch}: train loss {h['loss'][-1]:.4f}, test accuracy {h['val_accuracy'][-1]:.4f} "
              f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
