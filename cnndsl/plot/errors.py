"""The one error type of the plotting stage: bad input the user can fix."""

from __future__ import annotations


class PlotError(Exception):
    """A user-facing problem (unknown layer, unreadable image, missing `dot`...).

    The CLI prints it as `error: MESSAGE` and exits 1.
    """
