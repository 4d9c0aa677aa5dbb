"""What an op refuses: a bad argument (AttrError) or an input shape it cannot take (ShapeError).

Both are plain exceptions here; elaboration reports them at the call's span.
"""

from __future__ import annotations


class AttrError(Exception):
    """A bad argument: raised by `Op.bind` and `Signature.bind`, reported with the call's span.

    attr: the argument at fault (None: the call as a whole). code: the
    diagnostic code it is reported under (docs/diagnostics.md), chosen where
    it is raised: E011 an unknown name, E016 a name given twice, E012 anything
    else (missing, ill-typed, too many positional). notes: follow-up lines as
    rendered. suggestion: the close option the message names ("did you mean"),
    so a caller can tell a mistyped option from an undefined name.
    """

    def __init__(
        self,
        message: str,
        attr: str | None = None,
        *,
        code: str = "E012",
        notes: tuple[str, ...] = (),
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.attr = attr
        self.code = code
        self.notes = notes
        self.suggestion = suggestion

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {note}" for note in self.notes)])


class ShapeError(Exception):
    """An input shape the op cannot take; `working` shows the arithmetic that failed."""

    def __init__(self, message: str, working: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.working = working
