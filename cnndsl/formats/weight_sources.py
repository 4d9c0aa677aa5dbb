"""Other frameworks' weight files, as layers of arrays: the types readers produce.

Input: nothing (readers in cnndsl.formats.keras_h5 and cnndsl.formats.torch_state
fill these). Output: a `WeightSource`, the file's weighted layers in the
framework's order, each able to say which shapes it would have in our layouts
(`signatures`) and to hand over its arrays converted for one of our layers
(`arrays`). `detect_format` tells a file's format from its first bytes, never
from its name. Readers raise ModelError naming the file, the problem and the fix.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cnndsl.formats.files import open_regular
from cnndsl.formats.npz import ZIP_DAMAGE
from cnndsl.runtime.executor import ModelError

Shape = tuple[int, ...]
Signature = tuple[Shape, ...]  # the shapes of one layer's weights, in our order

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# HDF5 files may start with a user block of 512, 1024, 2048, ... bytes.
HDF5_OFFSETS = (0, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Target:
    """One layer of ours that has weights: what a source layer must fill."""

    path: str
    op: str
    names: tuple[str, ...]  # weight names, in the op's order (Keras order)
    shapes: Signature
    preds: tuple[str, ...]  # paths of the nearest layers with weights that feed it
    index: int  # position among the network's weighted layers, in plan order
    keras_rank: int  # position in the order Keras would list this graph's layers
    # A dense layer reading a flattened [H, W, C] map: its input rows follow our
    # (Keras') channels-last flattening, not PyTorch's channels-first one.
    flattened: Shape | None = None

    def describe(self) -> str:
        """'conv1/conv_1 (conv: kernel [7, 7, 3, 64], bias [64])'."""
        inner = ", ".join(f"{n} {list(s)}" for n, s in zip(self.names, self.shapes, strict=True))
        return f"{self.path} ({self.op}: {inner})"


class SourceLayer:
    """One weighted layer of another framework's file (a Keras layer, a PyTorch module).

    `names` are the file's own names of its arrays (for the load report and
    for mapping files); `preds` the names of the source layers with weights
    that feed it, when the file records its graph (None when it does not).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        weights: Sequence[tuple[str, np.ndarray]],
        preds: tuple[str, ...] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.weights = list(weights)
        self.preds = preds

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.weights]

    def signatures(self) -> list[Signature]:
        """Every set of shapes this layer could take in our layouts (one per reading)."""
        raise NotImplementedError

    def arrays(self, target: Target) -> list[tuple[str, np.ndarray]]:
        """(origin, array in our layout) for each weight of `target`, in its order.

        origin: the file's name of the array, and how it was rearranged, if it was.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """'conv1_conv (Conv2D: kernel [7, 7, 3, 64], bias [64])' with the file's shapes."""
        inner = ", ".join(f"{self._own(n)} {list(a.shape)}" for n, a in self.weights)
        return f"{self.name} ({self.kind}: {inner})"

    def _own(self, name: str) -> str:
        """A weight's name within its layer: 'kernel', 'vars/0', 'weight'."""
        for sep in ("/", "."):
            if name.startswith(self.name + sep):
                return name[len(self.name) + 1 :].removesuffix(":0")
        return name.rsplit("/", 1)[-1].removesuffix(":0")


@dataclass
class WeightSource:
    """A file's weighted layers, in the framework's order, and how to read that order.

    convention: "keras" (layers by depth from the output, as Keras lists
    them) or "torch" (modules in the order their model defines them); it
    decides between layers of equal shapes on parallel branches.
    order: "layers" (the model's own layer order), "names" (sorted by name:
    roughly the model's order, module by module) or "per_class" (only the
    order of layers of one class among themselves is known).
    """

    path: str
    format: str
    layers: list[SourceLayer]
    convention: str
    order: str = "layers"
    ignored: list[str] = field(default_factory=list)  # entries skipped on purpose


# ---- telling formats apart ----


def detect_format(path: str) -> str:
    """'npz', 'keras' (.keras archive), 'hdf5', 'safetensors', 'torch' or 'unknown', by content."""
    try:
        with open_regular(path) as f:  # NOTE: a FIFO would hang open(), /dev/zero never end
            head = f.read(4096 + len(HDF5_MAGIC))
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ModelError(f"{path}: cannot read weights ({e.strerror or e})") from None
    if any(head[o : o + len(HDF5_MAGIC)] == HDF5_MAGIC for o in HDF5_OFFSETS):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        return _zip_kind(path)
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # a pickle: PyTorch's legacy format (or any pickle)
    return "unknown"


def _zip_kind(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except ZIP_DAMAGE:  # NOTE: a bit flip can raise NotImplementedError, RuntimeError, ...
        # A cut archive has lost its directory (at the end), not its first member.
        names = [_first_member(path)]
        if names[0] in ("metadata.json", "config.json"):
            return "keras"
    if "config.json" in names and "model.weights.h5" in names:
        return "keras"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"  # torch.save's zip format
    return "npz"  # the .npz reader phrases a damaged archive


def _first_member(path: str) -> str:
    """The name in a zip's first local file header ('' if there is none to read)."""
    try:
        with open_regular(path) as f:
            header = f.read(30)
            if len(header) < 30 or not header.startswith(ZIP_MAGIC):
                return ""
            (length,) = struct.unpack("<H", header[26:28])
            return f.read(length).decode("utf-8", "replace")
    except OSError:
        return ""


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


# ---- naming helpers shared by the readers ----


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts 'layer2' before 'layer10' and 'conv2' before 'conv10'."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def load_mapping(mapping: str | os.PathLike[str] | dict[str, str]) -> dict[str, str]:
    """A mapping file (JSON: our weight key or layer path -> the file's name) as a dict."""
    if isinstance(mapping, dict):
        return {str(k): str(v) for k, v in mapping.items()}
    path = os.fspath(mapping)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the mapping file ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(
            f"{path}: not a JSON mapping file ({e}); write an object such as"
            ' {"conv1/conv_1:kernel": "conv1.weight"}'
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ModelError(
            f"{path}: a mapping file holds one JSON object of strings, our weight key or layer"
            ' path -> the file\'s name, e.g. {"conv1/conv_1:kernel": "conv1.weight"}'
        )
    return {str(k): v for k, v in data.items()}


__all__ = [
    "HDF5_MAGIC",
    "Signature",
    "SourceLayer",
    "Target",
    "WeightSource",
    "detect_format",
    "load_mapping",
    "natural_key",
]
