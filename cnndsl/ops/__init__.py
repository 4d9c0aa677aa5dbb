"""The op registry, with every module of this package imported so that `OPS` is complete.

An op family is one module here: a new file's `@register` classes join
`OPS` without a line anywhere else. Modules import in name order (act
first), which is the order of `OPS` and `ACTIVATIONS`.
"""

import importlib
import pkgutil

from cnndsl.ops.registry import ACTIVATIONS, OPS, Op, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ACTIVATIONS", "OPS", "Op", "register"]
