"""Loading: spec files and their imports, parsed once each.

`import "file.cnn"` is read relative to the importing file; `import zoo.NAME`
reads a spec shipped with the package. Each file's definitions (its own and
those it imports) are gathered in a `FileScope`; clashes, cycles, missing or
non-UTF-8 files and non-.cnn imports are CnnErrors at the import's span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnndsl.formats.files import require_regular_file
from cnndsl.frontend import syntax as ast
from cnndsl.frontend.grammar import resource_path
from cnndsl.frontend.parse import parse
from cnndsl.ops import OPS
from cnndsl.source import Span, decode_utf8, error, near_names

# NOTE: parsing costs about 450 bytes of memory and 20 µs per character of
# source (measured: a 1 MiB spec peaks at 490 MiB and takes 20 s), so the
# limit is what a small machine can parse; the largest shipped spec is 5 KB.
MAX_SOURCE_BYTES = 1024 * 1024  # one spec file or text
MAX_TOTAL_SOURCE_BYTES = 4 * MAX_SOURCE_BYTES  # a spec and everything it imports


def check_source_size(size: int, what: str, span: Span | None = None) -> None:
    """E065 when one source (`what`: its name) is past MAX_SOURCE_BYTES."""
    if size > MAX_SOURCE_BYTES:
        raise error(
            "E065",
            f"{what} is {size:,} bytes; specs are limited to {MAX_SOURCE_BYTES:,}"
            " (1 MiB: parsing takes about 450 bytes of memory per character)",
            span,
        )


@dataclass
class FileScope:
    """A loaded file: its definitions (own and imported), file-level defaults, text."""

    module: ast.Module
    text: str
    names: dict[str, tuple[ast.Definition, FileScope]] = field(default_factory=dict)


class Loader:
    """Reads and parses files once each, resolving imports; detects import cycles."""

    def __init__(self) -> None:
        self.files: dict[str, FileScope] = {}
        self.sources: dict[str, str] = {}
        self._loading: list[str] = []
        self.total_bytes = 0  # characters of every source loaded, for MAX_TOTAL_SOURCE_BYTES

    def load_text(self, text: str, file: str, span: Span | None = None) -> FileScope:
        """Parse spec text and everything it imports (`span`: the import that names it)."""
        self.total_bytes += len(text)
        if self.total_bytes > MAX_TOTAL_SOURCE_BYTES:
            raise error(
                "E065",
                f"the spec and its imports come to more than {MAX_TOTAL_SOURCE_BYTES:,} bytes"
                f" of source (limit {MAX_TOTAL_SOURCE_BYTES:,}, reached at '{file}')",
                span,
            )
        self.sources[file] = text
        module = parse(text, file)
        scope = FileScope(module, text)
        self.files[file] = scope
        self._loading.append(file)
        try:
            self._bind_names(scope, file)
        finally:
            self._loading.pop()
        return scope

    def load_file(self, path: Path, span: Span | None = None) -> FileScope:
        """Read a .cnn file (cached by resolved path)."""
        key = str(path)
        if key in self._loading:
            chain = " -> ".join(
                Path(p).name for p in [*self._loading[self._loading.index(key) :], key]
            )
            raise error("E061", f"import cycle: {chain}", span)
        if key in self.files:
            return self.files[key]
        if path.suffix != ".cnn":
            raise error("E062", f"can only import .cnn files, not '{path.name}'", span)
        try:
            require_regular_file(path)  # a FIFO would hang the read, /dev/zero never end
            check_source_size(path.stat().st_size, f"'{path}'", span)
            with path.open("rb") as handle:  # read no more than the limit, should it grow
                raw = handle.read(MAX_SOURCE_BYTES + 1)
            check_source_size(len(raw), f"'{path}'", span)
        except FileNotFoundError:
            raise error("E060", f"cannot import '{path}': no such file", span) from None
        except OSError as exc:
            raise error("E060", f"cannot read '{path}': {exc.strerror}", span) from None
        return self.load_text(decode_utf8(raw, key, imported_at=span), key, span)

    def _bind_names(self, scope: FileScope, file: str) -> None:
        for imp in scope.module.imports:
            target = self._resolve_import(imp, file)
            imported = self.load_file(target, imp.span)
            for name, (definition, owner) in imported.names.items():
                if owner is not imported:
                    continue  # imports are not re-exported
                self._declare(scope, name, definition, owner, imp.span)
        for definition in scope.module.definitions:
            self._declare(scope, definition.name, definition, scope, definition.span)

    def _declare(
        self, scope: FileScope, name: str, definition: ast.Definition, owner: FileScope, span: Span
    ) -> None:
        if name in OPS:
            raise error(
                "E051",
                f"'{name}' is an op: a {definition.kind} cannot take its name",
                definition.span,
            )
        if name in scope.names:
            first, _ = scope.names[name]
            raise error(
                "E050",
                f"'{name}' is defined twice",
                span,
                f"note: {first.kind} '{name}' defined at {first.span}",
                f"note: {definition.kind} '{name}' defined at {definition.span}",
            )
        scope.names[name] = (definition, owner)

    def _resolve_import(self, imp: ast.Import, file: str) -> Path:
        if imp.is_path:
            if any(ord(c) < 32 for c in imp.target):
                raise error(
                    "E060",
                    f"cannot import {imp.target!r}: control characters in the path",
                    imp.span,
                )
            base = Path(file).parent if not file.startswith("<") else Path.cwd()
            try:
                return (base / imp.target).resolve()
            except (OSError, ValueError, RuntimeError) as exc:
                raise error("E060", f"cannot import '{imp.target}': {exc}", imp.span) from None
        parts = imp.target.split(".")
        if parts[0] != "zoo" or len(parts) != 2:
            raise error(
                "E064",
                f"unknown module '{imp.target}': write `import zoo.NAME` for a"
                ' shipped spec or `import "file.cnn"` for a file',
                imp.span,
            )
        path = resource_path("specs") / f"{parts[1]}.cnn"
        if not path.is_file():
            shipped = sorted(p.stem for p in resource_path("specs").glob("*.cnn"))
            raise error(
                "E060",
                f"no shipped spec 'zoo.{parts[1]}'" + near_names(parts[1], shipped),
                imp.span,
                "note: shipped: " + ", ".join(shipped),
            )
        return path
