"""pyjlfa: train neural networks without backpropagation, from Python, on a bundled Julia core.

    import pyjlfa
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist()
    net = pyjlfa.Network([784, 256, 256, 10], activation="tanh", rule="fa", seed=0)
    net.fit(Xtr, ytr, epochs=10, batch_size=64, optimizer=pyjlfa.SGD(lr=0.05))
    net.evaluate(Xte, yte)

Importing pyjlfa starts nothing; Julia starts at the first Network (or ``pyjlfa.start_julia()``).
"""

from . import datasets, init, layers, robustness, rules
from ._runtime import DivergenceError, JuliaError, JuliaValueError, runtime_info, set_threads, start_julia
from .io import ModelFileError, load
from .network import Layer, Network
from .optimizers import SGD, Adam, AdamW, Cosine, StepDecay
from .sweep import sweep  # the function; the module stays importable as ``from pyjlfa.sweep import ...``

__version__ = "0.1.0"
__all__ = ["Network", "Layer", "SGD", "Adam", "AdamW", "StepDecay", "Cosine", "init", "rules", "JuliaError",
           "JuliaValueError", "DivergenceError", "runtime_info", "start_julia", "set_threads", "datasets", "layers", "__version__",
           "load", "ModelFileError", "sweep"]
