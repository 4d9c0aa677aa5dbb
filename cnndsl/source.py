"""Source locations and diagnostics.

A `Span` names a stretch of spec text; a `Diagnostic` is one message about
one span; `CnnError` carries every diagnostic of a failed compilation (and,
where compilation got that far, the partial graph). Rendering follows the
GCC format that editors understand, with the source line and a caret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    """A stretch of source text: 1-based line and column, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning with its code, location and follow-up notes."""

    severity: str  # "error" | "warning"
    code: str  # stable code, e.g. "E031"; documented in docs/diagnostics.md
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()

    def render(self, sources: dict[str, str] | None = None) -> str:
        """Format as `file:line:col: error[E0xx]: message` plus source line and caret."""
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.severity}[{self.code}]: {self.message}"]
        text = (sources or {}).get(self.span.file) if self.span else None
        if self.span and text is not None:
            lines.extend(caret_lines(text, self.span))
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def caret_lines(text: str, span: Span) -> list[str]:
    """The source line of `span` and a `^~~~` marker under it, tabs expanded."""
    source_lines = text.splitlines()
    if not 1 <= span.line <= len(source_lines):
        return []
    raw = source_lines[span.line - 1]
    line = raw.expandtabs(4)
    # Columns count characters of the raw line; map them through tab expansion.
    start = len(raw[: span.col - 1].expandtabs(4))
    if span.end_line == span.line and span.end_col > span.col:
        end = len(raw[: span.end_col - 1].expandtabs(4))
    else:
        end = len(line.rstrip())
    width = max(1, min(end, len(line) + 1) - start)
    return ["    " + line, "    " + " " * start + "^" + "~" * (width - 1)]


@dataclass
class CnnError(Exception):
    """A compilation that failed: one or more diagnostics, and the graph built so far."""

    diagnostics: list[Diagnostic]
    sources: dict[str, str] = field(default_factory=dict)
    partial: Any = None  # ir.Graph of the layers built before the failure, if any

    def __str__(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)


def error(code: str, message: str, span: Span | None = None, *notes: str) -> CnnError:
    """Shorthand for a CnnError with one error diagnostic."""
    return CnnError([Diagnostic("error", code, message, span, tuple(notes))])


def decode_utf8(raw: bytes, file: str, imported_at: Span | None = None) -> str:
    """A spec file's bytes as text, or E063 at the line and column of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # valid up to the bad byte
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        notes = (f"note: imported at {imported_at}",) if imported_at else ()
        bad = CnnError(
            [
                Diagnostic(
                    "error",
                    "E063",
                    f"'{file}' is not UTF-8 text: byte {exc.start} is 0x{raw[exc.start]:02x};"
                    " save the file as UTF-8",
                    Span(file, line, col, line, col + 1),
                    notes,
                )
            ],
            {file: raw.decode("utf-8", "replace")},
        )
        raise bad from None


def near_names(name: str, candidates: Any) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
