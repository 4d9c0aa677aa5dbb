"""cnndsl: a compiler for a declarative language of convolutional neural networks.

>>> import cnndsl
>>> net = cnndsl.compile("specs/fashion_mnist.cnn")     # doctest: +SKIP
>>> print(net.summary())                                  # doctest: +SKIP
>>> model = net.build(seed=0)                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from cnndsl.network import Network, compile, compile_block, load
from cnndsl.source import CnnError, Diagnostic, Span

__version__ = "0.1.0"

# Training-side names load on first use, so compiling a spec never imports the executor.
_LAZY = {
    "Model": "cnndsl.model",
    "ModelError": "cnndsl.model",
    "DataError": "cnndsl.data",
    "OutOfMemoryPlan": "cnndsl.guards",
    "NonFiniteLoss": "cnndsl.guards",
    "TrainingInterrupted": "cnndsl.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnndsl' has no attribute {name!r}")


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
