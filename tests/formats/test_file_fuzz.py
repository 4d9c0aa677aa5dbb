"""Fuzzing weight files, checkpoints and data files: thousands of seeded mutations, no traceback.

Each case damages a small, good file in one way (bit flips, a zip header
field, the file cut short, a `.npy` header, a member added, renamed or
dropped, an array's values, dtype or shape, a metadata field) and reads it as
cnndsl does: `Model.load` for weight files, `Checkpointer.resume` (and, when
the damaged checkpoint is accepted, the rest of the run with
`fit(resume=True)`) for checkpoints, `load_data` for .npz and IDX data. Every
read must succeed or raise the documented error (ModelError, DataError); a
resume must restore the damaged checkpoint, fall back to the good one before
it, or refuse it for one of the documented reasons (another network, other
data, another batch size).

Mutations that change a member's bytes rebuild the archive, so its CRCs are
valid and the damage reaches the `.npy` and metadata parsers. Cases are
seeded: a failure names its family and seed, and `mutate(raw, family, seed)`
rebuilds the file.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.formats.data import DataError, load_data
from cnndsl.training.checkpoint import Checkpointer, TrainState
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    train {
        optimizer = adam(lr=0.01)
        batch = 8
        epochs = 1
    }
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> maxpool(2) -> flatten -> dense(classes, activation=softmax, name="head")
}
"""

# ---- the good files ----


def toy(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 6, 6, 1), dtype=np.float32) + (0.3 * y[:, None, None, None])
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def network() -> Any:
    return cnndsl.compile(TINY)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, network: Any) -> dict[str, Any]:
    """A weight file, a data file, an IDX pair and a run's checkpoints (steps 2 and 4 of 6)."""
    root = tmp_path_factory.mktemp("good")
    x, y = toy()
    model = network.build(seed=1)
    folder = root / "ck"
    model.fit(x, y, epochs=1, batch_size=8, checkpoint_dir=folder, checkpoint_every=2)
    model.save(root / "w.npz")
    np.savez(root / "d.npz", x=x[:12], y=y[:12])
    images = np.random.default_rng(1).integers(0, 256, (12, 6, 6), np.uint8)
    idx = root / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (idx / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(12, dtype=np.uint8) % 3))
    return {
        "x": x,
        "y": y,
        "weights": (root / "w.npz").read_bytes(),
        "data": (root / "d.npz").read_bytes(),
        "idx": (idx / "train-images-idx3-ubyte.gz").read_bytes(),
        "idx_folder": idx,
        "older": (folder / "checkpoint-000000002.npz").read_bytes(),
        "newest": (folder / "checkpoint-000000004.npz").read_bytes(),
    }


def _idx(array: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.tobytes()


# ---- mutations ----

LOCAL_FIELDS = [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]
CENTRAL_FIELDS = [(6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4)]
END_FIELDS = [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]
SIGNATURES = {b"PK\x03\x04": LOCAL_FIELDS, b"PK\x01\x02": CENTRAL_FIELDS, b"PK\x05\x06": END_FIELDS}

NASTY_HEADERS = [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': 'abc', }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    "{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }",
    "{'descr': '|V0', 'fortran_order': False, 'shape': (1000000000,), }",
    "{'descr': '<U1', 'fortran_order': False, 'shape': (2,), }",
    "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 2), }",
    "{'descr': '<f4', 'fortran_order': False}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
    "{'descr': " + "[" * 500 + "]" * 500 + ", 'fortran_order': False, 'shape': (1,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",
    "{'descr': '<f4', 'fortran_order': 'no', 'shape': (1,), }",
    "{'descr': 'x', 'fortran_order': False, 'shape': (), }",
    "[1, 2, 3]",
    "",
    '"""',
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1L,), }",
]

RAW_JSON = [
    "null", "true", "-1", "0", "1.5", "18446744073709551616", "1e999", "-1e999", "NaN",
    "Infinity", '"x"', "[]", "{}", "[1, 2]", '{"a": 1}', "1" + "0" * 5000,
    "[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000, "[" * 200 + "]" * 200,
    "1" + "0" * 400, "-0", "4.0", "1e-320", '"\\ud800"',
]  # fmt: skip

WEIRD_ARRAYS: list[Callable[[np.ndarray], np.ndarray]] = [
    lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a) if a.size else a,
    lambda a: np.full_like(a, np.inf, dtype=np.float32) if a.dtype.kind == "f" else a * 0 + 10**6,
    lambda a: a.astype(np.float16),
    lambda a: a.astype(np.int32),
    lambda a: a.astype(np.complex64),
    lambda a: a.astype(bool),
    lambda a: np.full(a.shape, "ab"),
    lambda a: a.reshape(-1)[:-1] if a.size else np.zeros(1),
    lambda a: a[None],
    lambda a: np.zeros(0, a.dtype),
    lambda a: np.float32(3.0) * np.ones(()),
    lambda a: -a - 1,
    lambda a: a * 10**6,
    lambda a: a.astype(">f4") if a.dtype.kind == "f" else a.astype(">i8"),
    lambda a: np.asfortranarray(a),
]


def members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rebuild(content: dict[str, bytes], compress: bool = False) -> bytes:
    """An archive of these members, with valid CRCs."""
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in content.items():
            z.writestr(name, data)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def mutate(raw: bytes, family: str, seed: int) -> tuple[bytes, str]:
    """A damaged copy of raw (an .npz) and what was done to it."""
    rng = np.random.default_rng(seed)
    if family == "bits":
        out = bytearray(raw)
        spots = [int(rng.integers(len(out))) for _ in range(int(rng.integers(1, 4)))]
        for spot in spots:
            out[spot] ^= 1 << int(rng.integers(8))
        return bytes(out), f"bits flipped at {spots}"
    if family == "zip_header":
        found = [
            (pos, fields)
            for sig, fields in SIGNATURES.items()
            for pos in _all(raw, sig)
        ]  # fmt: skip
        pos, fields = found[int(rng.integers(len(found)))]
        offset, size = fields[int(rng.integers(len(fields)))]
        top = 256**size - 1
        value = pick([0, 1, 8, 9, 12, 14, 99, top, top // 2, int(rng.integers(top))], rng)
        out = bytearray(raw)
        out[pos + offset : pos + offset + size] = value.to_bytes(size, "little")
        return bytes(out), f"zip header at {pos}+{offset} set to {value}"
    if family == "cut":
        if rng.random() < 0.7:
            cut = int(rng.integers(len(raw)))
            return raw[:cut], f"cut to {cut} bytes"
        return raw + rng.bytes(int(rng.integers(1, 100))), "junk appended"
    content = members(raw)
    names = sorted(content)
    name = names[int(rng.integers(len(names)))]
    data = content[name]
    if family == "npy_header":
        choice = int(rng.integers(4))
        if choice == 0:
            header = NASTY_HEADERS[int(rng.integers(len(NASTY_HEADERS)))]
            text = header.encode("latin1").ljust(118) + b"\n"
            content[name] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data[128:]
            what = f"{name}: header {header[:50]!r}"
        elif choice == 1:
            out = bytearray(data)
            spot = int(rng.integers(6, min(128, len(out))))
            out[spot] = int(rng.integers(256))
            content[name] = bytes(out)
            what = f"{name}: header byte {spot} set to {out[spot]}"
        elif choice == 2:
            cut = int(rng.integers(len(data) + 1))
            content[name] = data[:cut]
            what = f"{name}: cut to {cut} bytes"
        else:
            content[name] = data + bytes(int(rng.integers(1, 9)))
            what = f"{name}: extra bytes"
        return rebuild(content), what
    if family == "member":
        choice = int(rng.integers(6))
        if choice == 0:
            content[name.removesuffix(".npy") + ".txt"] = content.pop(name)
            what = f"{name} renamed to .txt"
        elif choice == 1:
            content["notes.txt"] = b"not an array"
            what = "a text member added"
        elif choice == 2:
            del content[name]
            what = f"{name} removed"
        elif choice == 3:
            content["dir/"] = b""
            what = "a folder entry added"
        elif choice == 4:
            content[name] = rng.bytes(int(rng.integers(0, 200)))
            what = f"{name} replaced by random bytes"
        else:
            return rebuild(content, compress=True), "compressed (legal)"
        return rebuild(content), what
    if family == "array":
        if name == "meta.npy":
            change = int(rng.integers(3))
            meta = load_npy(data)
            content[name] = npy([meta.astype(np.int16), meta[None], meta.astype("<U1")][change])
            return rebuild(content), f"meta array changed ({change})"
        array = load_npy(data)
        change = int(rng.integers(len(WEIRD_ARRAYS) + 1))
        if change == len(WEIRD_ARRAYS):
            content[name] = npy(np.array([{"a": 1}], dtype=object))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                content[name] = npy(np.asarray(WEIRD_ARRAYS[change](array)))
        return rebuild(content), f"{name}: array change {change}"
    if family == "meta":
        if "meta.npy" not in content:
            return raw, "no metadata"
        meta = json.loads(load_npy(content["meta.npy"]).tobytes())
        what = _mutate_json(meta, rng)
        text = json.dumps(meta)
        for i, raw_text in enumerate(RAW_JSON):
            text = text.replace(f'"__raw{i}__"', raw_text)
        content["meta.npy"] = npy(np.frombuffer(text.encode(), np.uint8))
        return rebuild(content), f"meta: {what}"
    raise AssertionError(family)


def pick(values: list[int], rng: np.random.Generator) -> int:
    return values[int(rng.integers(len(values)))]


def _all(raw: bytes, needle: bytes) -> list[int]:
    found, start = [], raw.find(needle)
    while start != -1:
        found.append(start)
        start = raw.find(needle, start + 1)
    return found


def _mutate_json(meta: dict[str, Any], rng: np.random.Generator) -> str:
    """Change, add or delete one field somewhere in the metadata (in place)."""
    path: list[Any] = []
    node: Any = meta
    while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
        key = list(node)[int(rng.integers(len(node)))] if isinstance(node, dict) else None
        if isinstance(node, list):
            key = int(rng.integers(len(node)))
        path.append(key)
        node = node[key]
    if not path:
        path = ["epoch"]
    parent: Any = meta
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[last]
        return f"deleted {path}"
    value = f"__raw{int(rng.integers(len(RAW_JSON)))}__"
    parent[last] = value
    return f"{path} = {value}"


# ---- the checks ----

FAMILIES = ["bits", "zip_header", "cut", "npy_header", "member", "array"]
REFUSALS = ("checkpoint of a different network", "on other data", "of batch size")


def cases(families: list[str], n: int) -> list[tuple[str, int]]:
    return [(family, seed) for seed in range(n) for family in families]


def test_weight_files(good: dict[str, Any], network: Any, tmp_path: Path) -> None:
    """Model.load: success or ModelError, and nothing half-loaded."""
    model = network.build(seed=1)
    before = model.get_weights()
    path = tmp_path / "w.npz"
    failures = []
    for family, seed in cases(FAMILIES, 150):
        damaged, what = mutate(good["weights"], family, seed)
        path.write_bytes(damaged)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # NumPy's Python 2 header note
                model.load(path, strict=True)
        except ModelError:
            if not all(
                np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)
            ):
                failures.append(f"{family} {seed} ({what}): weights changed by a failed load")
        except Exception as e:  # noqa: BLE001 - any other exception is the bug this hunts
            failures.append(f"{family} {seed} ({what}): {type(e).__name__}: {e}")
        model.set_weights(before)
    assert not failures, "\n".join(failures[:10])


def test_data_files(good: dict[str, Any], tmp_path: Path) -> None:
    """load_data on a damaged .npz or .gz IDX file: success or DataError."""
    failures = []
    path = tmp_path / "d.npz"
    for family, seed in cases(FAMILIES, 40):
        damaged, what = mutate(good["data"], family, seed)
        path.write_bytes(damaged)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                load_data(str(path), (6, 6, 1), 3)
        except DataError:
            pass
        except Exception as e:  # noqa: BLE001
            failures.append(f"{family} {seed} ({what}): {type(e).__name__}: {e}")
    folder = tmp_path / "idx"
    shutil.copytree(good["idx_folder"], folder)
    images = folder / "train-images-idx3-ubyte.gz"
    for seed in range(200):
        rng = np.random.default_rng(seed)
        out = bytearray(good["idx"])
        for _ in range(int(rng.integers(1, 4))):
            out[int(rng.integers(len(out)))] ^= 1 << int(rng.integers(8))
        images.write_bytes(bytes(out[: len(out) - int(rng.integers(0, 3)) * 7]))
        try:
            load_data(str(images), (6, 6, 1), 3)
        except DataError:
            pass
        except Exception as e:  # noqa: BLE001
            failures.append(f"idx {seed}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("families", [FAMILIES[:3], FAMILIES[3:], ["meta"]])
def test_checkpoints_fall_back_or_refuse(
    good: dict[str, Any], network: Any, tmp_path: Path, families: list[str]
) -> None:
    """Checkpointer.resume on a damaged newest checkpoint: restore, fall back or refuse.

    When the damaged checkpoint is accepted, the run goes on from it with
    fit(resume=True) and must finish or raise a ModelError.
    """
    x, y = good["x"], good["y"]
    folder = tmp_path / "ck"
    failures, accepted = [], 0
    n = 300 if families == ["meta"] else 100
    for family, seed in cases(families, n):
        damaged, what = mutate(good["newest"], family, seed)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "checkpoint-000000002.npz").write_bytes(good["older"])
        (folder / "checkpoint-000000004.npz").write_bytes(damaged)
        model = network.build(seed=1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Checkpointer(folder) as saver:
                    saver.data = {"samples": 48, "batch_size": 8}
                    state = saver.resume(model, TrainState())
                source = state.history.params.get("resumed_from", "")
                if source.endswith("checkpoint-000000004.npz"):
                    accepted += 1
                    _go_on(model, x, y, folder)
                elif not source.endswith("checkpoint-000000002.npz"):
                    failures.append(f"{family} {seed} ({what}): resumed from {source!r}")
        except ModelError as e:
            if not any(reason in str(e) for reason in REFUSALS):
                failures.append(f"{family} {seed} ({what}): ModelError: {e}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{family} {seed} ({what}): {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures[:10])
    assert accepted < len(families) * n  # the damage was mostly noticed


def _go_on(model: Any, x: np.ndarray, y: np.ndarray, folder: Path) -> None:
    """The rest of the run from an accepted checkpoint: it ends, or stops with a ModelError.

    Accepted values can still be extreme (weights times 10**6): the run may then
    stop at a non-finite loss, which is a documented ModelError, not a traceback.
    """
    try:
        model.fit(x, y, epochs=2, batch_size=8, checkpoint_dir=folder, resume=True)
    except ModelError as e:
        assert "loss became" in str(e) or "non-finite" in str(e), str(e)
