"""Passes over the IR, each a pure function Graph -> Graph, run in this order."""

from cnndsl.passes.budgets import check_budgets
from cnndsl.passes.fold import fold_inference, fold_weights
from cnndsl.passes.macs import count_macs
from cnndsl.passes.memory import Memory, estimate_memory
from cnndsl.passes.params import count_params, totals
from cnndsl.passes.receptive import receptive_fields
from cnndsl.passes.shapes import infer_shapes, unread_pixel_warnings

PIPELINE = (infer_shapes, count_params, count_macs, receptive_fields, check_budgets)
# Not in the pipeline: fold_inference rewrites a network for inference only.


def run_pipeline(g):  # type: ignore[no-untyped-def]
    """Run every pass of PIPELINE in order."""
    for p in PIPELINE:
        g = p(g)
    return g


__all__ = [
    "PIPELINE",
    "Memory",
    "check_budgets",
    "count_macs",
    "count_params",
    "estimate_memory",
    "fold_inference",
    "fold_weights",
    "infer_shapes",
    "receptive_fields",
    "run_pipeline",
    "totals",
    "unread_pixel_warnings",
]
