"""minilr: training neural networks without backpropagation, by likelihood ratios.

LR, its sign approximation ALR, evolution strategies (ES, AES) and their hybrids, on NumPy or
CuPy, with no autograd anywhere. See ``README.md`` and ``tutorials/``.
"""
from . import _signals

_signals.quiet_interrupt_while_starting()  # `python -m minilr`: Ctrl-C while importing is one line

from . import _numba_cache  # noqa: E402

_numba_cache.ensure()  # before any kernel module compiles with cache=True (read-only installs)

from . import datasets, io, losses, metrics, optim, reference  # noqa: E402
from . import hsic  # noqa: E402  (minilr.hsic; in __all__ once docs/api lists it)
from .backend import Backend, cupy_available, get_backend  # noqa: E402
from .io import load, save  # noqa: E402
from .conv import (AvgPool1d, AvgPool2d, Conv1d, Conv2d, Flatten, GlobalAvgPool, GroupNorm, MaxPool1d,
                   MaxPool2d, Residual)
from .layers import Identity, Linear, ReLU, Sigmoid, Step, Tanh
from .models import MLP, Sequential, cnn, resnet5, resnet9
from .graph import GraphAttention
from .recurrent import GRU, LSTM
from .spiking import LIF
from .train import History, TrainingDiverged, estimate_gradient, train

__version__ = "0.1.0"

__all__ = [
    "MLP", "Sequential", "cnn", "resnet5", "resnet9", "Linear", "ReLU", "Tanh", "Sigmoid", "Identity", "Step",
    "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "Flatten", "GroupNorm",
    "GlobalAvgPool", "Residual",
    "LSTM", "GRU", "GraphAttention", "LIF",
    "estimate_gradient", "train", "History", "TrainingDiverged",
    "Backend", "get_backend", "cupy_available",
    "datasets", "losses", "metrics", "optim", "reference",
    "save", "load", "io",
]


def __getattr__(name):
    # ``minilr.plots`` imports matplotlib, which costs ~0.3 s: load it on first use only.
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'minilr' has no attribute {name!r}")
