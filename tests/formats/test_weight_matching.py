"""Matching other frameworks' layers to ours: formats by content, Keras' layer order, mappings.

Files here are written by hand (h5py, safetensors' NumPy API) in each
framework's layout, so these tests need neither Keras nor PyTorch; where
Keras is installed, the order Keras lists a graph in is checked against it.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.formats.weight_matching import keras_order
from cnndsl.formats.weight_sources import detect_format
from cnndsl.training.model import ModelError

h5py = pytest.importorskip("h5py")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TWIN = """
network twin(classes=2) {
    input image: [4, 4, 3]
    x = image -> conv(2, 1, name="stem")
    plain = x -> conv(2, 1, name="p")
    pooled = x -> maxpool(2, stride=1, padding=same) -> conv(2, 1, name="q")
    return plain + pooled -> flatten -> dense(classes, name="head")
}
"""

# ---- telling formats apart ----


def write_npz(path: Path) -> None:
    with open(path, "wb") as f:  # np.savez would add .npz to the name
        np.savez(f, a=np.zeros(2))


def write_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]


def write_safetensors(path: Path) -> None:
    safetensors_numpy.save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(path))


def write_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"fc.weight": [0.0]}, protocol=2))


def write_text(path: Path) -> None:
    path.write_text("weights, honest")


@pytest.mark.parametrize(
    ("write", "kind"),
    [
        (write_npz, "npz"),
        (write_hdf5, "hdf5"),
        (write_safetensors, "safetensors"),
        (write_pickle, "torch"),
        (write_text, "unknown"),
    ],
)
def test_formats_are_told_by_content(write: Any, kind: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"  # the same misleading name for all
    write(path)
    assert detect_format(str(path)) == kind


def test_keras_archive_and_torch_zip_are_told_from_npz(tmp_path: Path) -> None:
    import zipfile

    for name, kind in [("config.json", "keras"), ("archive/data.pkl", "torch")]:
        path = tmp_path / f"{kind}.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(name, "{}")
            z.writestr("model.weights.h5", b"")
        assert detect_format(str(path)) == kind


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.h5"
    with pytest.raises(ModelError, match=f"{path}: cannot read weights \\(No such file"):
        cnndsl.compile(TWIN).build().load(path)


# ---- the order Keras lists layers in ----


def test_keras_order_by_hand() -> None:
    # Depth (longest path to the output): head 0, flatten 1, add 2, p and q 3, the
    # pool 4, stem 5, image 6. p and q tie: the walk from the output reaches the
    # add's first input, p, first.
    model = cnndsl.compile(TWIN).build()
    paths = [model.plan.steps[i].path for i in keras_order(model.plan)]
    pool = next(p for p in paths if p.startswith("maxpool"))
    add = next(p for p in paths if p.startswith("add"))
    flatten = next(p for p in paths if p.startswith("flatten"))
    assert paths == ["image", "stem", pool, "p", "q", add, flatten, "head"]


def test_keras_order_matches_keras() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    image = keras.Input((4, 4, 3), name="image")
    x = layers.Conv2D(2, 1, name="stem")(image)
    plain = layers.Conv2D(2, 1, name="p")(x)
    pooled = layers.Conv2D(2, 1, name="q")(layers.MaxPooling2D(2, 1, "same", name="pool")(x))
    y = layers.Dense(2, name="head")(
        layers.Flatten(name="flatten")(layers.Add(name="add")([plain, pooled]))
    )
    theirs = [layer.name for layer in keras.Model(image, y).layers]
    model = cnndsl.compile(TWIN).build()
    ours = [model.plan.steps[i] for i in keras_order(model.plan)]
    assert [s.path if s.weights or s.op == "input" else s.op for s in ours] == [
        "image" if n == "image" else {"pool": "maxpool"}.get(n, n) for n in theirs
    ]


# ---- mapping files ----


def twin_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """TWIN's weights in PyTorch layouts; `branch_a` is what our 'q' computes, `branch_b` 'p'."""
    f32 = np.float32
    return {
        "stem.weight": rng.normal(size=(2, 3, 1, 1)).astype(f32),
        "stem.bias": rng.normal(size=(2,)).astype(f32),
        "branch_a.weight": rng.normal(size=(2, 2, 1, 1)).astype(f32),
        "branch_a.bias": rng.normal(size=(2,)).astype(f32),
        "branch_b.weight": rng.normal(size=(2, 2, 1, 1)).astype(f32),
        "branch_b.bias": rng.normal(size=(2,)).astype(f32),
        "head.weight": rng.normal(size=(2, 32)).astype(f32),
        "head.bias": rng.normal(size=(2,)).astype(f32),
    }


@pytest.fixture
def twin_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    state = twin_state(np.random.default_rng(0))
    path = tmp_path / "twin.safetensors"
    safetensors_numpy.save_file(state, str(path))
    return path, state


def test_a_mapping_settles_what_the_graph_cannot(twin_file: Any, tmp_path: Path) -> None:
    path, state = twin_file
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"p": "branch_b", "q": "branch_a"}))
    model = cnndsl.compile(TWIN).build()
    report = model.load(path, mapping=mapping)
    assert report.complete
    np.testing.assert_array_equal(
        model.layer_weights("p")["kernel"], state["branch_b.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(model.layer_weights("q")["bias"], state["branch_a.bias"])
    assert report.origins["q:kernel"] == "branch_a.weight (OIHW -> HWIO)"
    assert report.origins["stem:bias"] == "stem.bias"  # the rest matched by the graph


def test_a_mapping_of_single_weights(twin_file: Any) -> None:
    path, state = twin_file
    mapping = {"p:kernel": "branch_b.weight", "p:bias": "branch_b.bias", "q": "branch_a"}
    model = cnndsl.compile(TWIN).build()
    assert model.load(path, mapping=mapping).complete
    np.testing.assert_array_equal(
        model.layer_weights("p")["kernel"], state["branch_b.weight"].transpose(2, 3, 1, 0)
    )
    # A layer named in the mapping is left out of the matching: its other weights too.
    with pytest.raises(ModelError, match="in the network, left out by the mapping: p:bias"):
        cnndsl.compile(TWIN).build().load(path, mapping={"p:kernel": "branch_b.weight"})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            {"pp": "branch_a"},
            r"mapping: 'pp' is not a weight or layer of this network \(did you mean 'p'",
        ),
        (
            {"p": "branch_c"},
            r"the file has no layer 'branch_c' \(did you mean 'branch_",
        ),
        (
            {"p:bias": "branch_b.weight"},
            r"'branch_b.weight' has shape \[2, 2, 1, 1\] in the file;"
            r" 'p:bias' needs \[2\]",
        ),
        (
            {"p": "head"},
            r"mapping: head \(Linear: weight \[2, 32\], bias \[2\]\) cannot fill p \(conv:",
        ),
    ],
)
def test_mapping_mistakes(twin_file: Any, mapping: dict[str, str], message: str) -> None:
    path, _ = twin_file
    with pytest.raises(ModelError, match=message):
        cnndsl.compile(TWIN).build().load(path, mapping=mapping)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a JSON mapping file"),
        ('["p", "q"]', "a mapping file holds one JSON object of strings"),
    ],
)
def test_bad_mapping_files(twin_file: Any, tmp_path: Path, text: str, message: str) -> None:
    path, _ = twin_file
    mapping = tmp_path / "map.json"
    mapping.write_text(text)
    with pytest.raises(ModelError, match=f"{mapping}: {message}"):
        cnndsl.compile(TWIN).build().load(path, mapping=mapping)


def test_our_npz_takes_no_mapping(tmp_path: Path) -> None:
    model = cnndsl.compile(TWIN).build()
    model.save(tmp_path / "w.npz")
    with pytest.raises(ModelError, match="a mapping file is for other frameworks' weights"):
        model.load(tmp_path / "w.npz", mapping={"p": "q"})


def test_a_partial_load_reports_both_sides(twin_file: Any) -> None:
    path, _ = twin_file
    model = cnndsl.compile(TWIN, classes=3).build()
    report = model.load(path, strict=False)
    assert report.missing == ["head:kernel", "head:bias"]
    assert report.unexpected == ["head.weight", "head.bias"]
    assert "loaded 6 weight arrays from a safetensors file" in report.describe()


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    state = twin_state(np.random.default_rng(0))
    state["head.bias"][1] = np.inf
    path = tmp_path / "inf.safetensors"
    safetensors_numpy.save_file(state, str(path))
    model = cnndsl.compile(TWIN).build()
    before = model.get_weights()
    with pytest.raises(ModelError, match=r"head.bias \(for head:bias\) holds NaN or infinite"):
        model.load(path)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_hdf5_file_that_is_not_keras(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelError, match=f"{path}: an HDF5 file, but not Keras weights"):
        cnndsl.compile(TWIN).build().load(path)


def test_an_hdf5_file_claiming_terabytes(tmp_path: Path) -> None:
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # chunked and never written: a few KiB on disk
        f.attrs["layer_names"] = [b"fc"]
        f.create_group("fc").attrs["weight_names"] = [b"fc/kernel:0"]
        f["fc"].create_dataset("fc/kernel:0", shape=(10**6, 10**6), dtype="f4", chunks=(1, 1))
    with pytest.raises(
        ModelError,
        match=f"{path}: truncated or corrupt Keras weights: its arrays"
        " claim more than 4 times the file's",
    ):
        cnndsl.compile(TWIN).build().load(path)


def test_a_tf_keras_file_as_keras_applications_downloads(tmp_path: Path) -> None:
    # TF-Keras 2 wrote weight names with ':0' and split long lists into numbered
    # attributes (layer_names0, layer_names1, ...). Layers in Keras' order: p before q.
    rng = np.random.default_rng(0)
    arrays = {
        "stem": [rng.normal(size=(1, 1, 3, 2)), rng.normal(size=2)],
        "p": [rng.normal(size=(1, 1, 2, 2)), rng.normal(size=2)],
        "q": [rng.normal(size=(1, 1, 2, 2)), rng.normal(size=2)],
        "head": [rng.normal(size=(32, 2)), rng.normal(size=2)],
    }
    path = tmp_path / "twin_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = [b"input_1", b"stem", b"max_pooling2d"]
        f.attrs["layer_names1"] = [b"p", b"q", b"add", b"flatten", b"head"]
        for layer in ("input_1", "max_pooling2d", "add", "flatten"):
            f.create_group(layer).attrs["weight_names"] = np.array([], dtype="S1")
        for layer, (kernel, bias) in arrays.items():
            names = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            g = f.create_group(layer)
            g.attrs["weight_names"] = names
            g[names[0].decode()] = kernel.astype(np.float32)
            g[names[1].decode()] = bias.astype(np.float32)
    model = cnndsl.compile(TWIN).build()
    report = model.load(path)
    assert report.source == "Keras HDF5 weights" and report.complete
    for layer, (kernel, bias) in arrays.items():
        weights = model.layer_weights(layer)
        np.testing.assert_array_equal(weights["kernel"], kernel.astype(np.float32))
        np.testing.assert_array_equal(weights["bias"], bias.astype(np.float32))
        assert report.origins[f"{layer}:bias"] == f"{layer}/bias:0"
