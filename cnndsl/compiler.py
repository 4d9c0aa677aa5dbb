"""The compile API: spec text or file -> a shaped, counted `Network`.

`compile()` parses, loads imports, elaborates the chosen network with its
parameters, and runs the pass pipeline. Errors raise CnnError carrying every
diagnostic, the source texts (for carets) and the partial graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.formats.files import require_regular_file
from cnndsl.frontend.elaborate import Elaborator, with_partial
from cnndsl.frontend.grammar import resource_path
from cnndsl.frontend.imports import MAX_SOURCE_BYTES, FileScope, Loader, check_source_size
from cnndsl.ir import Graph, Layer
from cnndsl.passes import PIPELINE, estimate_memory, totals, unread_pixel_warnings
from cnndsl.passes.memory import Memory
from cnndsl.runtime.backends import Backend
from cnndsl.runtime.executor import ModelError
from cnndsl.source import CnnError, Diagnostic, decode_utf8, error, near_names
from cnndsl.summary import render_table, to_json
from cnndsl.training.model import Model

MAX_SPEC_BYTES = MAX_SOURCE_BYTES  # kept under its old name for callers
MAX_BATCH = 2**20  # memory plans and summaries: their cost grows with the batch's chunks


def check_batch(batch: int) -> int:
    """A batch size for plans and summaries, or ValueError naming the allowed range."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be a whole number from 1 to {MAX_BATCH:,}, not {batch!r}")
    return batch


class Network:
    """A compiled network: its IR graph (shaped and counted) and what the spec said."""

    def __init__(
        self, graph: Graph, sources: dict[str, str], warnings: list[Diagnostic] | None = None
    ) -> None:
        self.graph = graph
        self.sources = sources
        self.warnings = warnings or []

    @property
    def name(self) -> str:
        return str(self.graph.meta.get("name", "network"))

    @property
    def params(self) -> dict[str, Any]:
        """The network's parameters as bound (defaults and overrides)."""
        return dict(self.graph.meta.get("params", {}))

    @property
    def train(self) -> dict[str, Any]:
        """The spec's `train {}` section (empty if none)."""
        return dict(self.graph.meta.get("train", {}))

    @property
    def layers(self) -> list[Layer]:
        """Layers in topological order, inputs included."""
        return list(self.graph)

    @property
    def totals(self) -> dict[str, int]:
        return totals(self.graph)

    @property
    def total_params(self) -> int:
        return self.totals["params"]

    @property
    def trainable_params(self) -> int:
        return self.totals["trainable_params"]

    @property
    def non_trainable_params(self) -> int:
        return self.totals["non_trainable_params"]

    @property
    def macs(self) -> int:
        return self.totals["macs"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = self.graph[self.graph.inputs[0]].shape
        assert shape is not None
        return shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        shape = self.graph[self.graph.outputs[0]].shape
        assert shape is not None
        return shape

    def memory(self, batch: int = 1) -> Memory:
        """Memory estimate for a batch size."""
        return estimate_memory(self.graph, check_batch(batch))

    def summary(self, depth: int | None = None, batch: int = 1) -> str:
        """A Keras-like summary table as text."""
        return render_table(self.graph, depth=depth, batch=check_batch(batch))

    def to_json(self, depth: int | None = None, batch: int = 1) -> dict[str, Any]:
        """The documented JSON form (schema cnndsl.summary/1)."""
        return to_json(self.graph, depth=depth, batch=check_batch(batch))

    def build(
        self, backend: str | Backend = "numpy", seed: int | None = None, dtype: Any = "float32"
    ) -> Model:
        """An executable Model with fresh weights (seed: the spec's, else 0; float32 or float64)."""
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ModelError(f"dtype must be float32 or float64, not {np.dtype(dtype)}")
        return Model(self.graph, backend=backend, seed=seed, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"<Network {self.name}: {len(self.graph)} layers,"
            f" {self.total_params:,} params, output {list(self.output_shape)}>"
        )


def read_source(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, file name) from a path, a string naming a file, `zoo.NAME`, or spec text."""
    if isinstance(source, str) and source.startswith("zoo.") and source[4:].isidentifier():
        shipped = resource_path("specs") / f"{source[4:]}.cnn"
        if not shipped.is_file():
            names = sorted(p.stem for p in resource_path("specs").glob("*.cnn"))
            raise error("E060", f"no shipped spec '{source}'" + near_names(source[4:], names))
        source = shipped
    if isinstance(source, os.PathLike) or (
        isinstance(source, str)
        and "\n" not in source
        and len(source) < 4096
        and source.endswith(".cnn")
    ):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise error("E060", f"no such file: '{path}'") from None
        except OSError as exc:
            raise error("E060", f"cannot read '{path}': {exc.strerror}") from None
        except ValueError as exc:  # an embedded NUL byte
            raise error("E060", f"cannot read {str(path)!r}: {exc}") from None
        if path.is_dir():
            raise error("E060", f"'{path}' is a folder, not a .cnn file")
        try:
            require_regular_file(path)  # a FIFO would hang the read, /dev/zero never end
        except OSError as exc:
            raise error("E060", f"cannot read '{path}': {exc.strerror}") from None
        check_source_size(size, f"'{path}'")
        try:
            with path.open("rb") as handle:  # read no more than the limit, should it grow
                raw = handle.read(MAX_SOURCE_BYTES + 1)
            check_source_size(len(raw), f"'{path}'")
        except OSError as exc:
            raise error("E060", f"cannot read '{path}': {exc.strerror}") from None
        return decode_utf8(raw, str(path)), str(path)
    assert isinstance(source, str)
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        check_source_size(len(source.encode("utf-8", "replace")), "the spec text")
    return source, "<string>"


def load(source: str | os.PathLike[str]) -> tuple[Loader, FileScope]:
    """Parse a spec and its imports without elaborating anything."""
    text, file = read_source(source)
    loader = Loader()
    try:
        scope = loader.load_text(text, file)
    except CnnError as exc:
        exc.sources = {**loader.sources, **exc.sources}
        raise
    return loader, scope


def compile(  # noqa: A001 - the public name users expect: cnndsl.compile(...)
    source: str | os.PathLike[str],
    network: str | None = None,
    *,
    max_layers: int | None = None,
    **params: Any,
) -> Network:
    """Compile a spec (path or text) to a Network; `params` override network parameters."""
    loader, scope = load(source)
    definition = pick_network(scope, network)
    elaborator = Elaborator(loader, max_layers or 100_000)
    return _finish(
        loader, elaborator, definition, lambda: elaborator.network(scope, definition, params)
    )


def compile_block(
    source: str | os.PathLike[str], block: str, input_shape: tuple[int, ...], **params: Any
) -> Network:
    """Compile one block of a spec applied to an input of the given shape."""
    loader, scope = load(source)
    if block not in scope.names or scope.names[block][0].kind != "block":
        blocks = [n for n, (d, _) in scope.names.items() if d.kind == "block"]
        raise error(
            "E055",
            f"no block '{block}' in {scope.module.file}"
            + near_names(block, blocks)
            + (f" (blocks: {', '.join(blocks)})" if blocks else ""),
        )
    definition = scope.names[block][0]
    elaborator = Elaborator(loader)
    shape = tuple(input_shape)
    return _finish(
        loader, elaborator, definition, lambda: elaborator.block(scope, definition, shape, params)
    )


def _finish(
    loader: Loader, elaborator: Elaborator, definition: Any, elaborate: Callable[[], Graph]
) -> Network:
    """Elaborate, run the pass pipeline; a failure's error carries the graph built so far."""
    try:
        graph = elaborate()
        for step in PIPELINE:
            graph = step(graph)
    except CnnError as exc:
        raise with_partial(exc, elaborator.graph, loader.sources) from None
    except RecursionError:
        raise with_partial(
            error("E092", "the spec nests too deeply to compile", definition.span),
            elaborator.graph,
            loader.sources,
        ) from None
    return Network(graph, loader.sources, unread_pixel_warnings(graph))


def pick_network(scope: FileScope, name: str | None) -> Any:
    """The network to compile: the named one, or the file's only one."""
    own = [d for d in scope.module.definitions if d.kind == "network"]
    if name is not None:
        found = scope.names.get(name)
        if found is None or found[0].kind != "network":
            names = [n for n, (d, _) in scope.names.items() if d.kind == "network"]
            raise error(
                "E056",
                f"no network '{name}' in {scope.module.file}"
                + near_names(name, names)
                + (f" (networks: {', '.join(names)})" if names else ""),
            )
        return found[0]
    if len(own) == 1:
        return own[0]
    if not own:
        blocks = [d.name for d in scope.module.definitions if d.kind == "block"]
        hint = (
            f"; it defines blocks ({', '.join(blocks)}): compile one with --block NAME"
            " --input-shape H,W,C"
            if blocks
            else ""
        )
        raise error("E057", f"{scope.module.file} defines no network{hint}")
    raise error(
        "E058",
        f"{scope.module.file} defines several networks"
        f" ({', '.join(d.name for d in own)}): choose one with --network NAME",
    )
