"""Checkpoints whose metadata cannot be trusted are skipped, and resuming takes the one before.

Each case rewrites the newest of two checkpoints (metadata that is not JSON,
JSON without the format tag, no metadata, another format version) and resumes:
the warning names the file and the problem, and the run continues from the
older checkpoint exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.checkpoint import FORMAT, VERSION, CheckpointWarning

TINY = """
network tiny() {
    input image: [5, 5, 1]
    train {
        optimizer = rmsprop(lr=0.01)
        batch = 8
    }
    return image -> conv(3, 3, name="c") -> batchnorm -> relu -> flatten
        -> dense(3, activation=softmax, name="head")
}
"""


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    return (rng.random((48, 5, 5, 1)) + 0.3 * y[:, None, None, None]).astype(np.float32), y


def fit(folder: Path | None = None, **kw: Any) -> tuple[Any, Any]:
    model = cnndsl.compile(TINY).build(seed=1)
    x, y = data()
    history = model.fit(x, y, epochs=2, batch_size=8, checkpoint_dir=folder, **kw)
    return model, history


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def meta_bytes(meta: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


def with_meta(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        meta = json.loads(arrays["meta"].tobytes().decode())
        arrays["meta"] = meta_bytes(change(meta))

    return edit


def set_version(meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "version": VERSION + 1}


def drop_format(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "format"}


def not_json(arrays: dict[str, np.ndarray]) -> None:
    arrays["meta"] = np.frombuffer(b'{"format": "cnndsl-checkpoint", "vers', np.uint8)


def not_utf8(arrays: dict[str, np.ndarray]) -> None:
    arrays["meta"] = np.frombuffer(b"\xff\xfe\x00meta", np.uint8)


def meta_as_floats(arrays: dict[str, np.ndarray]) -> None:
    arrays["meta"] = arrays["meta"].astype(np.float32)


def no_meta(arrays: dict[str, np.ndarray]) -> None:
    del arrays["meta"]


def meta_a_list(arrays: dict[str, np.ndarray]) -> None:
    arrays["meta"] = meta_bytes([FORMAT, VERSION])


CASES = [
    (not_json, r"corrupt checkpoint metadata", True),
    (not_utf8, r"corrupt checkpoint metadata", True),
    (meta_as_floats, r"not a cnndsl checkpoint \(no metadata\)", True),
    (no_meta, r"not a cnndsl checkpoint \(no metadata\)", True),
    (meta_a_list, r"not a cnndsl checkpoint \(no format tag\)", True),
    (with_meta(drop_format), r"not a cnndsl checkpoint \(no format tag\)", True),
    (
        with_meta(set_version),
        rf"checkpoint format version {VERSION + 1}; this cnndsl reads 1",
        False,
    ),
]


IDS = ["not_json", "not_utf8", "meta_as_floats", "no_meta", "meta_a_list", "no_format", "version"]


@pytest.mark.parametrize(("damage", "problem", "set_aside"), CASES, ids=IDS)
def test_untrustworthy_metadata_is_skipped_for_the_older_checkpoint(
    tmp_path: Path, damage: Callable[[dict[str, np.ndarray]], None], problem: str, set_aside: bool
) -> None:
    reference, expected = fit()
    fit(tmp_path, checkpoint_every=4, keep=10)  # 6 steps an epoch: steps 4, 6, 8, 12
    newest = tmp_path / "checkpoint-000000012.npz"
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == newest.name
    arrays = arrays_of(newest)
    damage(arrays)
    newest.unlink()
    np.savez(newest, **arrays)
    with pytest.warns(
        CheckpointWarning, match=rf"skipping .*checkpoint-000000012.npz: .*{problem}"
    ):
        resumed, history = fit(tmp_path, resume=True, keep=10)
    assert history.params["resumed_from"].endswith("checkpoint-000000008.npz")
    assert history.history == expected.history
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # a damaged file is renamed out of the way; another version's is left where it is
    assert (tmp_path / "checkpoint-000000012.npz.corrupt").exists() == set_aside


def test_with_every_checkpoint_unusable_the_run_starts_afresh(tmp_path: Path) -> None:
    reference, expected = fit()
    fit(tmp_path, keep=10)  # epoch ends: steps 6 and 12
    for path in sorted(tmp_path.glob("checkpoint-*.npz")):
        arrays = arrays_of(path)
        with_meta(set_version)(arrays)
        np.savez(path, **arrays)
    with pytest.warns(CheckpointWarning) as record:
        resumed, history = fit(tmp_path, resume=True, keep=10)
    messages = [str(w.message) for w in record]
    assert sum("checkpoint format version 2" in m for m in messages) == 2
    assert any("no checkpoint to resume from; starting from the beginning" in m for m in messages)
    assert "resumed_from" not in history.params
    assert history.history == expected.history
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
