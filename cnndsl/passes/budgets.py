"""Budgets: the network's `budget {}` limits checked against its totals.

Reads meta["budgets"] (name, comparison, limit, span) and the counted layers.
Raises CnnError listing every budget exceeded.
"""

from __future__ import annotations

import operator

from cnndsl.ir import Graph
from cnndsl.passes.params import totals
from cnndsl.source import CnnError, Diagnostic

COMPARISONS = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}


def check_budgets(g: Graph) -> Graph:
    """Return g unchanged if every budget holds; else raise CnnError."""
    counts = totals(g)
    failed = []
    for name, op, limit, span in g.meta.get("budgets", ()):
        actual = counts[name]
        if not COMPARISONS[op](actual, limit):
            failed.append(
                Diagnostic(
                    "error",
                    "E080",
                    f"budget exceeded: {name} is {actual:,}, the budget says {op} {limit:,}",
                    span,
                )
            )
    if failed:
        raise CnnError(failed, partial=g)
    return g
