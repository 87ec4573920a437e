"""Layers for :class:`pyjlfa.Network`, named as in PyTorch so a layer list reads at a glance::

    from pyjlfa.layers import Conv2d, ReLU, MaxPool2d, Flatten, Linear
    net = pyjlfa.Network([Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
                          Conv2d(16, 120, 5), ReLU(), Flatten(), Linear(120, 84), ReLU(), Linear(84, 10)],
                         input_shape=(1, 32, 32), rule="fa")

A residual network nests lists inside :class:`Residual`::

    block = Residual([Conv2d(16, 32, 3, stride=2, padding=1, bias=False), BatchNorm2d(32), ReLU(),
                      Conv2d(32, 32, 3, padding=1, bias=False), BatchNorm2d(32)], shortcut="pad")

These are descriptions, not arrays: the network's layers (``net.layers``) hold the parameters, one
per item of the list you wrote (``net.layers[1]`` is the ReLU above), and ``net.named_layers()``
walks the nested ones too. The engine builds the same layers in Julia under Flux's names
(``Conv``, ``Dense``, ``BatchNorm``, ``SkipConnection``, ...); shapes, and whether layers fit
together, are checked there when the network is built, and the error names the layer's position.
Sizes are PyTorch's: (channels, height, width), kernels (height, width).
"""

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear", "BatchNorm2d",
           "BatchNorm1d", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Dropout", "Residual", "from_text", "julia_chain"]


def _positive(value, name, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _pair(value, name, low=1):
    """An int or (height, width) pair, as PyTorch takes them."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(_positive(v, name, low) for v in value)
    return (_positive(value, name, low),) * 2


def _julia_pair(hw):
    """(height, width) -> Julia's "(width, height)"."""
    return f"({hw[1]}, {hw[0]})"


def _flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


class _Layer:
    _fields = ()
    _defaults = {}

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields
                         if f not in self._defaults or getattr(self, f) != self._defaults[f])
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self):
        return hash((type(self), tuple(repr(getattr(self, f)) for f in self._fields)))


class Linear(_Layer):
    """Fully connected: ``y = x @ W + b`` with W of shape (in_features, out_features); no b with
    ``bias=False``.

    Parameters
    ----------
    in_features, out_features : int
        Values in and out per sample.
    bias : bool
        Whether the layer has a bias b.
    """

    _fields = ("in_features", "out_features", "bias")
    _defaults = {"bias": True}

    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _positive(in_features, "Linear in_features")
        self.out_features = _positive(out_features, "Linear out_features")
        self.bias = _flag(bias, "Linear bias")

    def _julia(self):
        return f"Dense({self.in_features} => {self.out_features}{'' if self.bias else '; bias=false'})"


class Conv2d(_Layer):
    """2-D convolution (cross-correlation, as torch.nn.Conv2d) with zero padding; W has PyTorch's
    shape (out_channels, in_channels, kh, kw). ``padding="same"`` (stride 1, odd kernels) keeps the
    image's size; ``bias=False`` leaves out b (a batch norm after the layer has its own shift).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size : int or (int, int)
        The kernel's (height, width).
    stride : int or (int, int)
        The step between output positions.
    padding : int, (int, int) or "same"
        Zeros added on each side, (height, width).
    bias : bool
        Whether the layer has a bias b.
    """

    _fields = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias")
    _defaults = {"stride": (1, 1), "padding": (0, 0), "bias": True}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        self.in_channels = _positive(in_channels, "Conv2d in_channels")
        self.out_channels = _positive(out_channels, "Conv2d out_channels")
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        if padding == "same":
            if self.stride != (1, 1) or any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError(f"Conv2d padding='same' needs stride 1 and odd kernel sizes (the engine pads both "
                                 f"sides alike), got stride={self.stride}, kernel_size={self.kernel_size}")
            padding = tuple(k // 2 for k in self.kernel_size)
        self.padding = _pair(padding, "Conv2d padding", low=0)
        self.bias = _flag(bias, "Conv2d bias")

    def _julia(self):
        return (f"Conv({_julia_pair(self.kernel_size)}, {self.in_channels} => {self.out_channels}; "
                f"stride={_julia_pair(self.stride)}, pad={_julia_pair(self.padding)}"
                + ("" if self.bias else ", bias=false") + ")")


class _Pool(_Layer):
    _fields = ("kernel_size", "stride")
    _julia_name = ""

    def __init__(self, kernel_size, stride=None):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, f"{name} stride")

    def _julia(self):
        return f"{self._julia_name}({_julia_pair(self.kernel_size)}; stride={_julia_pair(self.stride)})"


class MaxPool2d(_Pool):
    """Max pooling (no padding); stride defaults to the window. Backward, each window's error goes
    to its maximum; of equal maxima the first in memory order (along a row first) takes it.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, (height, width).
    stride : int or (int, int), optional
        The step between windows; default: the window.
    """

    _julia_name = "MaxPool"


class AvgPool2d(_Pool):
    """Mean pooling (no padding); stride defaults to the window.

    Parameters
    ----------
    kernel_size : int or (int, int)
        The window, (height, width).
    stride : int or (int, int), optional
        The step between windows; default: the window.
    """

    _julia_name = "MeanPool"


class AdaptiveAvgPool2d(_Layer):
    """The mean of each channel over the whole image: (C, H, W) -> (C, 1, 1). Only
    ``output_size=1`` (global average pooling, as ResNets end) is supported.

    Parameters
    ----------
    output_size : int
        Must be 1.
    """

    _fields = ("output_size",)

    def __init__(self, output_size=1):
        if output_size not in (1, (1, 1)):
            raise ValueError(f"AdaptiveAvgPool2d supports output_size=1 (global average pooling) only, got {output_size!r}")
        self.output_size = 1

    def _julia(self):
        return "GlobalMeanPool()"


class Flatten(_Layer):
    """(N, C, H, W) images to (N, C*H*W), in C order (no copy of meaning: the same memory order)."""

    def _julia(self):
        return "Flatten()"


class _BatchNorm(_Layer):
    _fields = ("num_features", "eps", "momentum")
    _defaults = {"eps": 1e-5, "momentum": 0.1}

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        name = type(self).__name__
        self.num_features = _positive(num_features, f"{name} num_features")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{name} eps must be a number > 0, got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"{name} momentum must be a number in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)

    def _julia(self):
        return f"BatchNorm({self.num_features}; momentum={self.momentum!r}, eps={self.eps!r})"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of (C, H, W) images, with PyTorch's conventions: batch
    statistics (biased variance) while training, running statistics (momentum 0.1, unbiased
    variance) in evaluation; gamma starts at 1, beta at 0, and neither is weight-decayed.

    Parameters
    ----------
    num_features : int
        Channels C.
    eps : float
        Added to the variance before its square root.
    momentum : float
        The running statistics' update rate: running = (1 - momentum) running + momentum batch.
    """


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of (F,) vectors; otherwise as :class:`BatchNorm2d`.

    Parameters
    ----------
    num_features : int
        Features F.
    eps : float
        Added to the variance before its square root.
    momentum : float
        The running statistics' update rate.
    """


class Dropout(_Layer):
    """Inverted dropout, as torch.nn.Dropout: while training (``fit``, ``step``) each value is zeroed
    with probability ``p`` and the others scaled by 1/(1-p), drawn from the network's generator (so a
    seed repeats them); when predicting or evaluating, and in ``gradients``, it passes values on
    unchanged. The backward pass applies the same mask.

    Parameters
    ----------
    p : float
        The probability of zeroing each value, ``0 <= p < 1``.
    """

    _fields = ("p",)

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"Dropout p must be a number in [0, 1), got {p!r}")
        self.p = float(p)

    def _julia(self):
        return f"Dropout({self.p!r})"


class _Activation(_Layer):
    _julia_name = ""

    def _julia(self):
        return self._julia_name


class ReLU(_Activation):
    """max(x, 0), as a layer of its own."""

    _julia_name = "relu"


class Tanh(_Activation):
    """tanh(x), as a layer of its own."""

    _julia_name = "tanh"


class Sigmoid(_Activation):
    """The logistic function 1 / (1 + exp(-x)), as a layer of its own."""

    _julia_name = "sigmoid"


class LeakyReLU(_Activation):
    """max(x, 0.01 x): the engine's slope is fixed at PyTorch's default, 0.01.

    Parameters
    ----------
    negative_slope : float
        Must be 0.01.
    """

    _fields = ("negative_slope",)

    def __init__(self, negative_slope=0.01):
        if negative_slope != 0.01:
            raise ValueError(f"LeakyReLU negative_slope must be 0.01 (the engine's), got {negative_slope!r}")
        self.negative_slope = 0.01

    _julia_name = "leakyrelu"


class Residual(_Layer):
    """A residual block: ``main(x) + shortcut(x)``. ``main`` is a list of layers; ``shortcut`` is
    None (the identity), a list of layers (a projection, e.g. ``[Conv2d(16, 32, 1, stride=2,
    bias=False), BatchNorm2d(32)]``), or ``"pad"``: He et al.'s parameter-free option A as biotorch
    writes it (every second row and column when ``main`` halves the image, and zero channels padded
    evenly on both sides up to ``main``'s). Both paths must give the same shape. Backward, the error
    at the output reaches both paths and the errors they carry back add up. In ``named_layers()``
    the layers inside are ``"k.main.i"`` and ``"k.shortcut.i"``.

    Parameters
    ----------
    main : list of layers
        The main path.
    shortcut : None, list of layers or "pad"
        The identity (None), a projection, or He et al.'s option A ("pad").
    """

    _fields = ("main", "shortcut")
    _defaults = {"shortcut": None}

    def __init__(self, main, shortcut=None):
        self.main = _layer_list(main, "Residual main")
        if shortcut is not None and shortcut != "pad":
            shortcut = _layer_list(shortcut, "Residual shortcut")
        self.shortcut = shortcut

    def _julia(self):
        main = _chain_text(self.main)
        if self.shortcut is None:
            return f"SkipConnection({main}, +)"
        return f"Parallel(+, {main}, {'PadShortcut()' if self.shortcut == 'pad' else _chain_text(self.shortcut)})"


def _layer_list(layers, what):
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{what} must be a list of pyjlfa.layers objects, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise ValueError(f"{what} is empty: it needs at least one layer")
    for k, layer in enumerate(layers):
        _check_layer(layer, f"{what}[{k}]")
    return layers


def _chain_text(layers):
    return "Chain(" + ", ".join(layer._julia() for layer in layers) + ")"


def _check_layer(layer, where):
    if isinstance(layer, _Layer):
        return
    known = ", ".join(__all__[:-1])
    hint = ""
    if type(layer).__module__.startswith("torch"):
        hint = (" PyTorch modules are not taken: write the same layers from pyjlfa.layers "
                "(e.g. torch.nn.Conv2d(1, 6, 5) -> pyjlfa.layers.Conv2d(1, 6, 5)).")
    raise TypeError(f"{where} is {layer!r}; expected a layer from pyjlfa.layers ({known}).{hint}")


def from_text(text, where="layers"):
    """A list of layers from its Python text, as you would write it (``"[Conv2d(1, 6, 5), ReLU(),
    MaxPool2d(2), Flatten(), Linear(864, 10)]"``, or as a layer's repr prints it), for spec files
    and the command line. The text is parsed, never evaluated: only calls of this module's layers
    with literal arguments (numbers and their + - * // arithmetic, strings, True/False/None, tuples,
    nested lists of layers).

    Parameters
    ----------
    text : str
        The list, as Python text.
    where : str
        What to call it in an error (a spec key, a command-line option).
    """
    import ast
    import operator
    arithmetic = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
    known = {name: globals()[name] for name in __all__ if name[0].isupper()}
    if not isinstance(text, str):
        raise TypeError(f"{where} must be the text of a list of layers, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"{where}: cannot read {text!r} as Python ({e.msg}); expected a list of layer calls "
                         "such as [Linear(784, 256), ReLU(), Linear(256, 10)]") from None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [value(n) for n in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -_number(value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in arithmetic:   # Linear(16 * 5 * 5, 120)
            return arithmetic[type(node.op)](_number(value(node.left)), _number(value(node.right)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not any(
                isinstance(a, ast.Starred) for a in node.args) and all(k.arg for k in node.keywords):
            if node.func.id not in known:
                raise ValueError(f"{where}: {node.func.id!r} is not a layer of pyjlfa.layers; it has "
                                 f"{', '.join(known)}.")
            return known[node.func.id](*map(value, node.args), **{k.arg: value(k.value) for k in node.keywords})
        raise ValueError(f"{where}: {ast.unparse(node)!r} is not a layer call or a literal (the text is read, "
                         "not run: no variables, arithmetic or other functions)")

    def _number(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}: arithmetic on {v!r}: only numbers can be added or multiplied")
        return v

    layers = value(tree)
    if not isinstance(layers, list):
        raise ValueError(f"{where}: expected a list of layers in brackets, got {text!r}")
    return _layer_list(layers, where)


def julia_chain(layers):
    """The engine's layer calls, one Julia call per item of ``layers`` (nested ones inside).

    Parameters
    ----------
    layers : list of layers
        Layers from this module.

    Returns
    -------
    list of str
    """
    return [layer._julia() for layer in _layer_list(layers, "layers")]


def __getattr__(name):
    """A layer pyjlfa does not have: say which exist (and where another way does the job)."""
    if name.startswith("__"):
        raise AttributeError(name)
    other = {"Sequential": " A Network takes the list of layers itself; Residual takes lists for its paths."}
    raise AttributeError(f"module 'pyjlfa.layers' has no layer {name!r}; it has {', '.join(__all__[:-1])}."
                         + other.get(name, ""))
