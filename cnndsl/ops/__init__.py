"""The op registry, with every op family imported so that `OPS` is complete."""

from cnndsl.ops import act, conv, dense, norm, pool, shape  # noqa: F401  (registers ops)
from cnndsl.ops.registry import ACTIVATIONS, OPS, Op, register

__all__ = ["ACTIVATIONS", "OPS", "Op", "register"]
