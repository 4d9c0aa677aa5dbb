"""cnndsl: a compiler for a declarative language of convolutional neural networks.

>>> import cnndsl
>>> net = cnndsl.compile("specs/fashion_mnist.cnn")     # doctest: +SKIP
>>> print(net.summary())                                  # doctest: +SKIP
>>> model = net.build(seed=0)                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnndsl.compiler import Network, compile, compile_block, load
    from cnndsl.formats.data import DataError
    from cnndsl.formats.onnx_spec import from_onnx
    from cnndsl.runtime.executor import ModelError
    from cnndsl.source import CnnError, Diagnostic, Span
    from cnndsl.training.checkpoint import TrainingInterrupted
    from cnndsl.training.guards import NonFiniteLoss, OutOfMemoryPlan
    from cnndsl.training.model import Model

__version__ = "0.1.0"

# NOTE: the public names are imported on first use, not here: importing NumPy
# and the compiler takes most of a second, and the command line must be inside
# its Ctrl-C handler (cnndsl.cli.main) while that happens.
_HOMES = {
    "Network": "cnndsl.compiler",
    "compile": "cnndsl.compiler",
    "compile_block": "cnndsl.compiler",
    "load": "cnndsl.compiler",
    "DataError": "cnndsl.formats.data",
    "ModelError": "cnndsl.runtime.executor",
    "CnnError": "cnndsl.source",
    "Diagnostic": "cnndsl.source",
    "Span": "cnndsl.source",
    "TrainingInterrupted": "cnndsl.training.checkpoint",
    "NonFiniteLoss": "cnndsl.training.guards",
    "OutOfMemoryPlan": "cnndsl.training.guards",
    "Model": "cnndsl.training.model",
    "from_onnx": "cnndsl.formats.onnx_spec",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        try:  # a submodule: cnndsl.compiler, cnndsl.passes, ...
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


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
    "from_onnx",
    "load",
]
