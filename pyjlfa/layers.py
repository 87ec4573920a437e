"""Layers for :class:`pyjlfa.Network`, named as in PyTorch so a layer list reads at a glance::

    from pyjlfa.layers import Conv2d, ReLU, MaxPool2d, Flatten, Linear
    net = pyjlfa.Network([Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
                          Conv2d(16, 120, 5), ReLU(), Flatten(), Linear(120, 84), ReLU(), Linear(84, 10)],
                         input_shape=(1, 32, 32), rule="fa")

These are descriptions, not arrays: the network's layers (``net.layers``) hold the parameters.
An activation layer (ReLU, Tanh, Sigmoid, LeakyReLU) applies to the Conv2d or Linear before it, as
Flux's ``σ`` does; the engine's layers are Julia's ``Conv``, ``Dense``, ``MaxPool``, ``MeanPool`` and
``Flatten``. Shapes and whether layers fit together are checked by the engine when the network is
built, and the error names the layer. Python sizes are PyTorch's: (channels, height, width), kernels
(height, width); the engine's Julia calls list (width, height), the order of its arrays.
"""

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "Linear", "ReLU", "Tanh", "Sigmoid", "LeakyReLU",
           "julia_chain"]


def _positive(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _pair(value, name, low=1):
    """An int or (height, width) pair, as PyTorch takes them."""
    if isinstance(value, tuple) and len(value) == 2:
        return tuple(_positive(v, name, low) for v in value)
    if isinstance(value, list) and len(value) == 2:
        return tuple(_positive(v, name, low) for v in value)
    return (_positive(value, name, low),) * 2


def _julia_pair(hw):
    """(height, width) -> Julia's "(width, height)"."""
    return f"({hw[1]}, {hw[0]})"


class _Layer:
    _fields = ()

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self):
        return hash((type(self), tuple(getattr(self, f) for f in self._fields)))


class Linear(_Layer):
    """Fully connected: ``y = x @ W + b`` with W of shape (in_features, out_features)."""

    _fields = ("in_features", "out_features")

    def __init__(self, in_features, out_features):
        self.in_features = _positive(in_features, "Linear in_features")
        self.out_features = _positive(out_features, "Linear out_features")

    def _julia(self, activation):
        return f"Dense({self.in_features} => {self.out_features}{activation})"


class Conv2d(_Layer):
    """2-D convolution (cross-correlation, as torch.nn.Conv2d) with zero padding; W has PyTorch's
    shape (out_channels, in_channels, kh, kw)."""

    _fields = ("in_channels", "out_channels", "kernel_size", "stride", "padding")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.in_channels = _positive(in_channels, "Conv2d in_channels")
        self.out_channels = _positive(out_channels, "Conv2d out_channels")
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.padding = _pair(padding, "Conv2d padding", low=0)

    def _julia(self, activation):
        return (f"Conv({_julia_pair(self.kernel_size)}, {self.in_channels} => {self.out_channels}{activation}; "
                f"stride={_julia_pair(self.stride)}, pad={_julia_pair(self.padding)})")


class _Pool(_Layer):
    _fields = ("kernel_size", "stride")
    _julia_name = ""

    def __init__(self, kernel_size, stride=None):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, f"{name} stride")

    def _julia(self, activation):
        return f"{self._julia_name}({_julia_pair(self.kernel_size)}; stride={_julia_pair(self.stride)})"


class MaxPool2d(_Pool):
    """Max pooling (no padding); stride defaults to the window. Backward, each window's error goes
    to its maximum; of equal maxima the first in memory order (along a row first) takes it."""

    _julia_name = "MaxPool"


class AvgPool2d(_Pool):
    """Mean pooling (no padding); stride defaults to the window."""

    _julia_name = "MeanPool"


class Flatten(_Layer):
    """(N, C, H, W) images to (N, C*H*W), in C order (no copy of meaning: the same memory order)."""

    def _julia(self, activation):
        return "Flatten()"


class _Activation(_Layer):
    _julia_name = ""


class ReLU(_Activation):
    _julia_name = "relu"


class Tanh(_Activation):
    _julia_name = "tanh"


class Sigmoid(_Activation):
    _julia_name = "sigmoid"


class LeakyReLU(_Activation):
    """max(x, 0.01 x): the engine's slope is fixed at PyTorch's default, 0.01."""

    _fields = ("negative_slope",)
    _julia_name = "leakyrelu"

    def __init__(self, negative_slope=0.01):
        if negative_slope != 0.01:
            raise ValueError(f"LeakyReLU negative_slope must be 0.01 (the engine's), got {negative_slope!r}")
        self.negative_slope = 0.01


def julia_chain(layers):
    """The engine's layer calls (one Julia call per layer) for a list of these layers; activation
    layers fold into the Conv2d or Linear before them."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of pyjlfa.layers objects, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: a network needs at least one layer")
    lines, k = [], 0
    while k < len(layers):
        layer = layers[k]
        if isinstance(layer, _Activation):
            raise ValueError(f"layers[{k}] is {layer!r}, but an activation must follow a Conv2d or Linear"
                             + ("" if k == 0 else f" (layers[{k - 1}] is {layers[k - 1]!r})"))
        if not isinstance(layer, _Layer):
            raise TypeError(f"layers[{k}] is {layer!r}; expected a layer from pyjlfa.layers "
                            "(Conv2d, MaxPool2d, AvgPool2d, Flatten, Linear, ReLU, Tanh, Sigmoid, LeakyReLU)")
        activation = ""
        if isinstance(layer, (Conv2d, Linear)) and k + 1 < len(layers) and isinstance(layers[k + 1], _Activation):
            activation = ", " + layers[k + 1]._julia_name
            k += 1
        lines.append(layer._julia(activation))
        k += 1
    return lines
