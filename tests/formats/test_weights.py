"""Weight files: every bad .npz is refused with the file, the problem and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    return image -> conv(4, 3, name="c1") -> batchnorm(name="bn") -> flatten
        -> dense(classes, activation=softmax, name="head")
}
"""


def build(classes: int = 3) -> Any:
    return cnndsl.compile(TINY, classes=classes).build(seed=0)


def good(path: Path) -> bytes:
    build().save(path)
    return path.read_bytes()


def truncated(path: Path) -> None:
    raw = good(path)
    path.write_bytes(raw[: len(raw) - 40])


def bit_flip(path: Path) -> None:
    raw = bytearray(good(path))
    raw[raw.index(b"\x93NUMPY") + 140] ^= 0xFF  # in the first array's data (header: 128)
    path.write_bytes(bytes(raw))


def pickled(path: Path) -> None:
    np.savez(path, **{"c1:kernel": np.array([{"a": 1}], dtype=object)})


def foreign(path: Path) -> None:
    np.savez(path, conv1_weight=np.zeros((4, 1, 3, 3)))


def other_shapes(path: Path) -> None:
    build(classes=5).save(path)


def non_finite(path: Path) -> None:
    from cnndsl.formats.weights import save_weights

    model = build()
    model.params["head:bias"][1] = np.nan
    save_weights(model, path, force=True)  # Model.save refuses non-finite weights


def text(path: Path) -> None:
    path.write_text("weights, honest")


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated", truncated, "truncated or corrupt .npz .*; write the weights again"),
    ("bit flip", bit_flip, r"truncated or corrupt .npz \(Bad CRC-32"),
    ("pickled", pickled, "holds pickled Python objects, which cnndsl does not load"),
    ("not ours", foreign, "not weights of this network: none of its 1 arrays"),
    (
        "shapes",
        other_shapes,
        "does not match this network:\nloaded 6 weight arrays\nshape mismatch",
    ),
    ("non-finite", non_finite, "weight head:bias holds NaN or infinite values"),
    ("not an npz", text, r"not an .npz file \(no zip header"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_weight_files_are_refused(
    make: Callable[[Path], None], message: str, tmp_path: Path, capsys: Any
) -> None:
    from cnndsl.cli import main

    path = tmp_path / "w.npz"
    make(path)
    model = build()
    before = model.get_weights()
    with pytest.raises(ModelError, match=f"{path}.*{message}"):
        model.load(path, strict=True)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing half-loaded

    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    assert main(["run", str(spec), "--load", str(path), "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "Traceback" not in err


def test_partial_loading_is_explicit(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    path = tmp_path / "w.npz"
    other_shapes(path)
    report = build().load(path)  # the API's default: load what fits, report the rest
    assert report.mismatched and "c1:kernel" in report.loaded
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    argv = ["run", str(spec), "--load", str(path), "--load-partial", "--data", "digits"]
    # digits are 8×8: the data check fails after the load, which is what we look at.
    assert main([*argv, "--set", "classes=3"]) == 1
    err = capsys.readouterr().err
    assert "shape mismatch head:kernel" in err and "loaded 6 weight arrays" in err
