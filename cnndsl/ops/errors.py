"""What an op refuses: a bad argument (AttrError) or an input shape it cannot take (ShapeError).

Both are plain exceptions here; elaboration reports them at the call's span.
"""

from __future__ import annotations


class AttrError(Exception):
    """A bad argument to an op: raised by `Op.bind`, reported with the call's span."""

    def __init__(self, message: str, attr: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.attr = attr


class ShapeError(Exception):
    """An input shape the op cannot take; `working` shows the arithmetic that failed."""

    def __init__(self, message: str, working: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.working = working
