"""Backends: where arrays live and which array module (`xp`) the kernels use.

`get_backend("numpy")` imports `cnndsl.runtime.backends.numpy_backend`, `"cupy"` imports
`cnndsl.runtime.backends.cupy_backend`: a backend is found by module name, and only
when asked for, so `import cnndsl` works without CuPy installed.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from cnndsl.runtime.backends.base import Backend, BackendError, Capabilities


def available() -> list[str]:
    """Names of the backend modules shipped (importable or not)."""
    here = __path__  # type: ignore[name-defined]
    return sorted(
        m.name.removesuffix("_backend")
        for m in pkgutil.iter_modules(here)
        if m.name.endswith("_backend")
    )


def get_backend(name: str | Backend = "numpy", seed: int = 0, **options: Any) -> Backend:
    """A Backend instance for `name` (a backend object passes through unchanged)."""
    if isinstance(name, Backend):
        return name
    if name not in available():
        raise BackendError(
            f"unknown backend '{name}'; available backends: {', '.join(available())}"
        )
    module = importlib.import_module(f"cnndsl.runtime.backends.{name}_backend")
    return module.create(seed=seed, **options)


__all__ = ["Backend", "BackendError", "Capabilities", "available", "get_backend"]
