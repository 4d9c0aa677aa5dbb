"""cnndsl: a compiler for a declarative language of convolutional neural networks.

>>> import cnndsl
>>> net = cnndsl.compile("specs/fashion_mnist.cnn")     # doctest: +SKIP
>>> print(net.summary())                                  # doctest: +SKIP
>>> model = net.build(seed=0)                             # doctest: +SKIP
"""

from __future__ import annotations

from cnndsl.compiler import Network, compile, compile_block, load
from cnndsl.formats.data import DataError
from cnndsl.runtime.executor import ModelError
from cnndsl.source import CnnError, Diagnostic, Span
from cnndsl.training.checkpoint import TrainingInterrupted
from cnndsl.training.guards import NonFiniteLoss, OutOfMemoryPlan
from cnndsl.training.model import Model

__version__ = "0.1.0"

__all__ = [
    "CnnError",
    "DataError",
    "Diagnostic",
    "Model",
    "ModelError",
    "Network",
    "NonFiniteLoss",
    "OutOfMemoryPlan",
    "Span",
    "TrainingInterrupted",
    "compile",
    "compile_block",
    "load",
]
