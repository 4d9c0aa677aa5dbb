"""`cnndsl plot`: diagrams (Graphviz), feature maps, filters, curves and the HTML report.

Diagram tests read the SVG back and count what a reader would: every layer's
label and output shape, one edge per tensor use, one cluster per block
instance. They skip without Graphviz's `dot`; the HTML report's browser
test skips without Debian's `chromium`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import cnndsl
from cnndsl.cli import main
from cnndsl.ir import Graph
from cnndsl.plot import PlotError, draw, render, rendering, shape_text
from cnndsl.plot.curves import draw_history, panels, parse_history
from cnndsl.plot.maps import activations, draw_feature_maps, feature_maps, load_image
from cnndsl.plot.report import report_html

ROOT = Path(__file__).resolve().parents[2]
LANG = ROOT / "examples" / "language"
EXAMPLE = ROOT / "examples" / "feature_maps"
SVG = "{http://www.w3.org/2000/svg}"

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)"
)

# A frozen block holding a repeated block: nested clusters, `×2` merging, frozen marks.
NESTED = """
block unit(f) {
    return relu((input -> conv(f, 3, padding=same)) + input)
}
block stage(f) {
    return input -> unit(f) * 2
}
network nested() {
    input image: [8, 8, 4]
    x = image -> stage(4, name="s1", trainable=false) -> unit(4) * 2
    return x -> flatten -> dense(3, activation=softmax)
}
"""

INCEPTION_ARGS = {"c1": 64, "c3_reduce": 96, "c3": 128, "c5_reduce": 16, "c5": 32, "pool_proj": 32}


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    """The networks every diagram test draws, compiled once."""
    spec = tmp_path_factory.mktemp("specs") / "nested.cnn"
    spec.write_text(NESTED)
    return {
        "fashion_mnist": cnndsl.compile(ROOT / "specs" / "fashion_mnist.cnn").graph,
        "resnet34": cnndsl.compile(ROOT / "specs" / "resnet34.cnn").graph,
        "inception": cnndsl.compile_block(
            LANG / "inception.cnn", "inception", (28, 28, 192), **INCEPTION_ARGS
        ).graph,
        "se": cnndsl.compile_block(LANG / "se_xception.cnn", "se", (28, 28, 64)).graph,
        "xception_entry": cnndsl.compile_block(
            LANG / "se_xception.cnn", "xception_entry", (56, 56, 64), filters=128
        ).graph,
        "nested": cnndsl.compile(spec).graph,
    }


# ---- reading an SVG back ----


class Svg:
    """What Graphviz drew: nodes by name, edges, clusters, every text."""

    def __init__(self, data: bytes) -> None:
        self.root = ET.fromstring(data)
        self.nodes: dict[str, ET.Element] = {}
        self.edges: list[ET.Element] = []
        self.clusters: list[ET.Element] = []
        for g in self.root.iter(f"{SVG}g"):
            kind = g.get("class")
            if kind == "node":
                self.nodes[self.title(g)] = g
            elif kind == "edge":
                self.edges.append(g)
            elif kind == "cluster":
                self.clusters.append(g)

    @staticmethod
    def title(g: ET.Element) -> str:
        el = g.find(f"{SVG}title")
        assert el is not None and el.text is not None
        return el.text

    @staticmethod
    def texts(g: ET.Element) -> list[str]:
        return [(t.text or "").strip() for t in g.iter(f"{SVG}text")]

    def edge_labels(self) -> list[str]:
        return [t for e in self.edges for t in self.texts(e)]

    def center(self, name: str) -> tuple[float, float]:
        """Centre of a node's outline (HTML labels' text is left-anchored, so not the text)."""
        g = self.nodes[name]
        nums: list[float] = []
        for shape in g:
            if shape.tag == f"{SVG}ellipse":
                return float(shape.get("cx", 0)), float(shape.get("cy", 0))
            if shape.tag in (f"{SVG}path", f"{SVG}polygon"):
                nums = [
                    float(v)
                    for v in re.findall(r"-?\d+\.?\d*", shape.get("d") or shape.get("points") or "")
                ]
                break
        xs, ys = nums[0::2], nums[1::2]
        return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2


def concat_text(g: Graph, path: str) -> str:
    layer = g[path]
    if layer.op != "concat":
        return layer.label
    parts = "+".join(str(g[i].shape[-1]) for i in layer.inputs)  # type: ignore[index]
    return f"{layer.label} {parts}={layer.shape[-1]}"  # type: ignore[index]


# ---- diagrams ----


@needs_dot
@pytest.mark.parametrize(
    "name", ["fashion_mnist", "resnet34", "inception", "se", "xception_entry", "nested"]
)
def test_svg_shows_every_layer_shape_edge_and_block(nets: dict[str, Graph], name: str) -> None:
    g = nets[name]
    svg = Svg(rendering.pipe(draw(g), "svg"))
    # One node per layer, plus one "output" marker per network output.
    assert set(svg.nodes) == {layer.path for layer in g} | {
        f"__output_{i}" for i in range(len(g.outputs))
    }
    for layer in g:
        texts = svg.texts(svg.nodes[layer.path])
        assert texts[0] == concat_text(g, layer.path), layer.path
        assert texts[1].startswith(layer.name)
        if layer.params:
            assert f"{layer.params:,} params" in texts[1]
    # One edge per (input, layer) pair and one into each output marker, each labelled
    # with the shape of the tensor it carries.
    expected = [shape_text(g[src].shape) for layer in g for src in layer.inputs]
    expected += [shape_text(g[p].shape) for p in g.outputs]
    assert len(svg.edges) == len(expected)
    assert sorted(svg.edge_labels()) == sorted(expected)
    # One cluster per block instance, labelled with the block's name.
    instances = {s.path: s.block for layer in g for s in layer.scopes}
    assert len(svg.clusters) == len(instances)
    assert sorted(svg.texts(c)[0] for c in svg.clusters) == sorted(instances.values())


@needs_dot
def test_resnet_unit_reads_like_the_paper(nets: dict[str, Graph]) -> None:
    """The main path is one straight column; the projection shortcut runs beside it."""
    svg = Svg(rendering.pipe(draw(nets["resnet34"]), "svg"))
    unit = "residual_unit_4"
    main = [
        f"{unit}/{n}"
        for n in ("conv_1", "batchnorm_1", "relu_1", "conv_2", "batchnorm_2", "add_1", "relu_2")
    ]
    xs = [svg.center(p)[0] for p in main]
    assert max(xs) - min(xs) < 1.0, xs
    ys = [svg.center(p)[1] for p in main]
    assert ys == sorted(ys)  # top to bottom in data-flow order
    skip_x = svg.center(f"{unit}/conv_3")[0]
    assert skip_x > max(xs) + 50


@needs_dot
def test_inception_branches_sit_side_by_side(nets: dict[str, Graph]) -> None:
    svg = Svg(rendering.pipe(draw(nets["inception"]), "svg"))
    heads = [
        "inception_1/conv_1",
        "inception_1/conv_2",
        "inception_1/conv_4",
        "inception_1/maxpool_1",
    ]
    centres = [svg.center(h) for h in heads]
    assert len({round(y) for _, y in centres}) == 1  # the four branch heads share a row
    xs = sorted(x for x, _ in centres)
    assert all(b - a > 50 for a, b in zip(xs, xs[1:], strict=False))
    concat_y = svg.center("inception_1/concat_1")[1]
    assert all(concat_y > svg.center(f"inception_1/{n}")[1] for n in ("conv_3", "conv_5", "conv_6"))


@needs_dot
def test_depth_collapses_blocks_and_merges_identical_runs(nets: dict[str, Graph]) -> None:
    g = nets["resnet34"]
    d = draw(g, depth=1)
    blocks = [n for n in d.nodes if n.kind == "block"]
    # 3, 4, 6, 3 units; the first of each later stage downsamples, so it stands alone.
    assert [len(n.scopes) for n in blocks] == [3, 1, 3, 1, 5, 1, 2]
    assert sum(len(n.layers) for n in blocks) == sum(1 for layer in g if layer.scopes)
    svg = Svg(rendering.pipe(d, "svg"))
    assert not svg.clusters
    first = svg.texts(svg.nodes["residual_unit_1"])
    assert first[0] == "residual_unit ×3"
    params = sum(
        layer.params
        for layer in g
        if layer.scopes
        and layer.scopes[0].path in ("residual_unit_1", "residual_unit_2", "residual_unit_3")
    )
    assert f"{params:,} params" in " ".join(first)
    assert len(svg.edges) == len(svg.nodes) - 1  # a chain once the blocks are folded
    # Depth 2 on the nested spec: top-level instances (s1, unit_1, unit_2) stay clusters,
    # the two units inside s1 fold into one node.
    nested = Svg(rendering.pipe(draw(nets["nested"], depth=2), "svg"))
    assert sorted(Svg.texts(c)[1].split(" ")[0] for c in nested.clusters) == [
        "s1",
        "unit_1",
        "unit_2",
    ]
    assert Svg.texts(nested.nodes["s1/unit_1"])[0] == "unit ×2"
    assert "s1/unit_2" not in nested.nodes


@needs_dot
def test_frozen_layers_are_marked(nets: dict[str, Graph]) -> None:
    g = nets["nested"]
    svg = Svg(rendering.pipe(draw(g), "svg"))
    frozen = [layer.path for layer in g if not layer.trainable and layer.params]
    assert frozen == ["s1/unit_1/conv_1", "s1/unit_2/conv_1"]
    for path in frozen:
        node = svg.nodes[path]
        assert "frozen" in svg.texts(node)
        assert any(el.get("stroke-dasharray") for el in node)
    assert "frozen" not in svg.texts(svg.nodes["unit_1/conv_1"])
    stage = next(c for c in svg.clusters if svg.texts(c)[0] == "stage")
    assert "frozen" in svg.texts(stage)


@needs_dot
@pytest.mark.parametrize(
    "name,rankdir",
    [
        ("fashion_mnist", "LR"),
        ("resnet34", "TB"),
        ("inception", "TB"),
        ("se", "TB"),
        ("nested", "TB"),
    ],
)
def test_png_renders(nets: dict[str, Graph], tmp_path: Path, name: str, rankdir: str) -> None:
    out = render(draw(nets[name], rankdir=rankdir), tmp_path / f"{name}.png")
    with Image.open(out) as img:
        assert img.format == "PNG"
        w, h = img.size
    assert w >= 150 and h >= 80
    if name == "fashion_mnist":
        assert w > 20 * h  # a 17-layer chain drawn left to right
    elif name == "inception":
        assert w > 1.2 * h and w < 3 * h  # four branches side by side
    else:
        assert h > 1.5 * w  # chains drawn top to bottom
    if name == "resnet34":
        assert h > 5000  # 126 layers, one per row-ish, at 96 dpi


@needs_dot
def test_pdf_and_dot_outputs(nets: dict[str, Graph], tmp_path: Path) -> None:
    d = draw(nets["se"])
    assert render(d, tmp_path / "se.pdf").read_bytes().startswith(b"%PDF")
    text = render(d, tmp_path / "se.dot").read_text()
    assert text.startswith("digraph") and "se_1/multiply_1" in text


def test_without_dot_the_source_is_written_with_install_hints(
    nets: dict[str, Graph],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(rendering.shutil, "which", lambda name: None)
    with pytest.raises(PlotError, match="apt-get install graphviz"):
        render(draw(nets["se"]), tmp_path / "se.svg")
    assert (tmp_path / "se.dot").read_text().startswith("digraph")
    assert not (tmp_path / "se.svg").exists()
    # The CLI says the same and exits 1; a .dot request needs no dot at all.
    spec = str(ROOT / "specs" / "digits.cnn")
    assert main(["plot", spec, "-o", str(tmp_path / "d.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Graphviz's `dot` program is not installed")
    assert "d.dot" in err and "Traceback" not in err
    assert main(["plot", spec, "-o", str(tmp_path / "only.dot")]) == 0
    assert (tmp_path / "only.dot").read_text().startswith("digraph")


@needs_dot
def test_cli_diagram_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.svg"
    spec = str(ROOT / "specs" / "resnet34.cnn")
    assert (
        main(["plot", spec, "--set", "size=64", "--depth", "1", "--rankdir", "LR", "-o", str(out)])
        == 0
    )
    svg = Svg(out.read_bytes())
    assert "residual_unit ×3" in svg.texts(svg.nodes["residual_unit_1"])
    assert "input [64, 64, 3]" in svg.texts(svg.nodes["image"])
    block = str(LANG / "inception.cnn")
    assert (
        main(
            [
                "plot",
                block,
                "--block",
                "inception",
                "--input-shape",
                "28,28,192",
                "--set",
                *[f"{k}={v}" for k, v in INCEPTION_ARGS.items()],
                "-o",
                str(tmp_path / "i.svg"),
            ]
        )
        == 0
    )
    assert main(["plot", spec, "-o", str(tmp_path / "r.jpeg")]) == 1
    err = capsys.readouterr().err
    assert "cannot tell the format of" in err
    assert "Traceback" not in err


# ---- feature maps (the Hands-On ML figure) ----


def _example() -> Any:
    """examples/feature_maps/feature_maps.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "feature_maps_example", EXAMPLE / "feature_maps.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bars(h: int = 64, w: int = 64) -> np.ndarray:
    """A black RGB image with one vertical and one horizontal white bar, 1 pixel wide."""
    img = np.zeros((h, w, 3), np.float32)
    img[4:40, 16] = 1.0  # vertical bar, column 16, rows 4..39
    img[50, 24:60] = 1.0  # horizontal bar, row 50, columns 24..59
    return img


def _line_model(h: int, w: int) -> Any:
    ex = _example()
    model = ex.line_model(h, w).build(seed=0)
    model.set_weights([ex.line_filters()])
    return model


def test_line_filters_are_the_books() -> None:
    k = _example().line_filters()
    assert k.shape == (7, 7, 3, 2)
    assert (k[:, 3, :, 0] == 1).all() and k[..., 0].sum() == 7 * 3  # column 3: vertical
    assert (k[3, :, :, 1] == 1).all() and k[..., 1].sum() == 7 * 3  # row 3: horizontal


def test_vertical_filter_answers_vertical_lines_and_horizontal_horizontal() -> None:
    model = _line_model(64, 64)
    maps = feature_maps(model, _bars(), "lines")
    assert maps.shape == (64, 64, 2)
    vertical, horizontal = maps[..., 0], maps[..., 1]
    # On the vertical bar the vertical filter sums 7 lit pixels × 3 channels; the
    # horizontal one crosses the 1-pixel bar once.
    assert vertical[20, 16] == pytest.approx(21.0)
    assert horizontal[20, 16] == pytest.approx(3.0)
    assert horizontal[50, 40] == pytest.approx(21.0)
    assert vertical[50, 40] == pytest.approx(3.0)
    v_bar = (slice(8, 36), 16)
    h_bar = (50, slice(28, 56))
    assert vertical[v_bar].min() > 2 * horizontal[v_bar].max()
    assert horizontal[h_bar].min() > 2 * vertical[h_bar].max()


def test_line_filters_on_the_sample_photo() -> None:
    """china.jpg: the vertical map stays sharp across x and blurs along y, and vice versa."""
    pytest.importorskip("sklearn")
    photo = _example().sample_images()["china"][150:310, 200:440]  # the pagoda, 160×240
    maps = feature_maps(_line_model(*photo.shape[:2]), photo, "lines")
    inner = maps[8:-8, 8:-8]  # away from the zero padding

    def sharpness(m: np.ndarray) -> float:
        """Mean change across columns over mean change across rows."""
        return float(np.abs(np.diff(m, axis=1)).mean() / np.abs(np.diff(m, axis=0)).mean())

    vertical, horizontal = sharpness(inner[..., 0]), sharpness(inner[..., 1])
    assert vertical > 1.5 > 1 / 1.5 > horizontal
    # The vertical map keeps the photo's vertical edges: where the image changes sharply
    # across x but not along y, its response changes more across x than the other map's.
    gray = photo.mean(axis=2)[8:-8, 8:-8]
    dx = np.abs(np.diff(gray, axis=1))[:-1]
    dy = np.abs(np.diff(gray, axis=0))[:, :-1]
    edges = (dx > np.percentile(dx, 95)) & (dy < np.percentile(dy, 50))
    v_dx = np.abs(np.diff(inner[..., 0], axis=1))[:-1][edges].mean()
    h_dx = np.abs(np.diff(inner[..., 1], axis=1))[:-1][edges].mean()
    assert v_dx > 1.5 * h_dx


def test_activations_match_the_model_output() -> None:
    net = cnndsl.compile(ROOT / "specs" / "digits.cnn")
    model = net.build(seed=3)
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    out = activations(model, x, [net.graph.outputs[0], "conv_1"])
    np.testing.assert_allclose(out[net.graph.outputs[0]], model(x), rtol=1e-5, atol=1e-6)
    assert out["conv_1"].shape == (2, 8, 8, 32)


def test_activations_of_fused_and_in_place_activations() -> None:
    """r runs inside batchnorm (fused) and r6 overwrites p's output (in place): the maps of
    r, p and r6 are still each layer's own value, whichever layers are asked for together."""
    spec = """
    network fused() {
        input image: [6, 6, 1]
        return image -> conv(3, 3, padding=same, name="c") -> batchnorm(name="bn")
            -> relu(name="r") -> conv(2, 1, name="p") -> relu6(name="r6") -> flatten -> dense(2)
    }
    """
    model = cnndsl.compile(spec).build(seed=2)
    plan = model.plan
    assert plan.steps[plan.index("r")].attrs.get("fused_into") == "bn"
    assert plan.steps[plan.index("r6")].attrs.get("inplace") is True
    rng = np.random.default_rng(4)
    for name in ("gamma", "beta", "moving_mean"):
        model.params[f"bn:{name}"][...] = rng.normal(size=3)
    model.params["bn:moving_variance"][...] = rng.uniform(0.5, 2.0, 3)
    model.params["p:kernel"][...] = rng.normal(scale=4.0, size=(1, 1, 3, 2))
    x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    out = activations(model, x, ["c", "r", "p", "r6"])
    w = model.layer_weights("bn")
    bn = (out["c"] - w["moving_mean"]) * w["gamma"] / np.sqrt(w["moving_variance"] + 0.001)
    np.testing.assert_allclose(out["r"], np.maximum(bn + w["beta"], 0), rtol=1e-5, atol=1e-5)
    p = model.layer_weights("p")
    want_p = out["r"] @ p["kernel"][0, 0] + p["bias"]
    np.testing.assert_allclose(out["p"], want_p, rtol=1e-5, atol=1e-5)
    assert out["p"].min() < 0 and out["p"].max() > 6  # not overwritten by relu6
    np.testing.assert_array_equal(out["r6"], np.clip(out["p"], 0, 6))
    alone = activations(model, x, ["p"])["p"]
    np.testing.assert_array_equal(alone, out["p"])


def test_load_image_converts_to_the_input_shape(tmp_path: Path) -> None:
    rgb = (np.random.default_rng(1).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    gray = load_image(tmp_path / "x.png", (28, 28, 1))
    assert gray.shape == (28, 28, 1) and gray.dtype == np.float32
    assert gray.min() >= 0 and gray.max() <= 1
    same = load_image(tmp_path / "x.png", (30, 40, 3))
    np.testing.assert_allclose(same, rgb / 255, atol=1e-6)
    with pytest.raises(PlotError, match="cannot read this image"):
        load_image(__file__, (28, 28, 1))
    with pytest.raises(PlotError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png", (28, 28, 1))


def test_cli_feature_maps_and_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(EXAMPLE / "lines.cnn")
    model = _line_model(64, 64)
    model.save(tmp_path / "lines.npz")
    Image.fromarray((_bars() * 255).astype(np.uint8)).save(tmp_path / "bars.png")
    size = ["--set", "height=64", "width=64"]
    out = tmp_path / "maps.png"
    assert (
        main(
            [
                "plot",
                spec,
                *size,
                "--load",
                str(tmp_path / "lines.npz"),
                "--feature-maps",
                str(tmp_path / "bars.png"),
                "--layer",
                "lines",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as img:
        w, h = img.size
    assert w > 1.5 * h  # two square maps side by side
    out = tmp_path / "filters.png"
    assert (
        main(
            [
                "plot",
                spec,
                *size,
                "--load",
                str(tmp_path / "lines.npz"),
                "--filters",
                "lines",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as img:
        assert img.size[0] > 200
    fm = str(ROOT / "specs" / "fashion_mnist.cnn")
    assert main(["plot", fm, "--filters", "conv_1", "-o", str(tmp_path / "f1.png")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--feature-maps", "IMG", "--layer", "conv_9"], "error: no layer 'conv_9'"),
        (
            ["--feature-maps", __file__, "--layer", "conv_1"],
            f"error: {__file__}: cannot read this image",
        ),
        (
            ["--feature-maps", "/nonexistent.png", "--layer", "conv_1"],
            "error: /nonexistent.png: no such file",
        ),
        (["--filters", "dense_1"], "error: 'dense_1' is a dense layer"),
        (["--filters", "nope"], "error: no layer 'nope'"),
        (["--filters", "conv_1", "--load", __file__], "error: "),
    ],
)
def test_cli_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    argv = [str(img) if a == "IMG" else a for a in argv]
    code = main(
        ["plot", str(ROOT / "specs" / "fashion_mnist.cnn"), *argv, "-o", str(tmp_path / "out.png")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(message), err
    assert "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_feature_maps_of_many_channels_and_of_a_vector() -> None:
    rng = np.random.default_rng(0)
    fig = draw_feature_maps(rng.random((14, 14, 128)), "many")
    assert fig.get_size_inches()[0] <= 16
    fig = draw_feature_maps(rng.random(10), "vector")
    assert fig.axes[0].get_xlabel() == "unit"


# ---- training curves ----


HISTORY = {
    "loss": [1.0, 0.6, 0.4],
    "accuracy": [0.5, 0.7, 0.8],
    "val_loss": [0.9, 0.7, 0.6],
    "val_accuracy": [0.6, 0.7, 0.75],
}


def test_history_forms() -> None:
    series, epochs = parse_history(HISTORY)
    assert epochs is None and series["val_loss"] == [0.9, 0.7, 0.6]
    assert panels(series) == [("loss", "val_loss"), ("accuracy", "val_accuracy")]
    series, epochs = parse_history({"history": HISTORY, "epoch": [0, 1, 2]})
    assert epochs == [1, 2, 3]
    with pytest.raises(PlotError, match="not a list of numbers"):
        parse_history({"loss": "low"})
    with pytest.raises(PlotError, match="not a training history"):
        parse_history([1, 2, 3])
    fig = draw_history(series, epochs)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["training", "validation"]


def test_cli_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "h.json"
    plain.write_text(json.dumps(HISTORY))
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"history": HISTORY}))
    for src in (plain, wrapped):
        out = tmp_path / f"{src.stem}.png"
        assert main(["plot", str(src), "-o", str(out)]) == 0
        with Image.open(out) as img:
            w, h = img.size
        assert w > h > 200
    assert main(["plot", str(plain)]) == 0 and plain.with_suffix(".png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["plot", str(bad), "-o", str(tmp_path / "b.png")]) == 1
    assert main(["plot", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and "no such file" in err and "Traceback" not in err


# ---- the HTML report ----


@needs_dot
def test_report_is_self_contained(nets: dict[str, Graph]) -> None:
    g = nets["nested"]
    page = report_html(g, curves_png=b"\x89PNG fake")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert '<link rel="stylesheet"' not in page and "@import" not in page
    assert page.count("<svg") == 1 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    raw = re.search(r'<script type="application/json" id="cnndsl-data">(.*?)</script>', page, re.S)
    assert raw
    payload = json.loads(raw.group(1))
    ids = set(re.findall(r'<g id="([^"]+)" class="(?:node|cluster)"', page))
    assert set(payload["nodes"]) <= {i.replace("&#45;", "-") for i in ids}
    layer = next(d for d in payload["nodes"].values() if d["path"] == "s1/unit_1/conv_1")
    assert layer["shape"] == [8, 8, 4] and layer["params"] == 148 and not layer["trainable"]
    assert layer["macs"] == g["s1/unit_1/conv_1"].macs
    assert layer["receptive_field"] == list(g["s1/unit_1/conv_1"].receptive)  # type: ignore
    assert set(payload["owner"]) >= {layer.path for layer in g}
    assert "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode() in page
    assert '<table class="summary">' in page and "Total params" in page


def _high_fd(fd: int) -> int:
    """The same pipe end at a descriptor number >= 10 (the original is closed)."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """Headless Chromium driven by the DevTools protocol over --remote-debugging-pipe.

    CDP messages are JSON terminated by NUL on fds 3 (to the browser) and 4 (from it);
    no websocket or extra package needed.
    """

    def __init__(self, binary: str, profile: Path, timeout: float = 30.0) -> None:
        # NOTE: the browser's ends are moved to fds >= 10 first, so putting them on
        # 3 and 4 cannot overwrite one with the other.
        to_r, self._w = (_high_fd(fd) for fd in os.pipe())
        self._r, from_w = (_high_fd(fd) for fd in os.pipe())
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # A tiny Python wrapper puts the pipe ends on fds 3 and 4 and execs the browser
        # (dash's `3<&N` takes single-digit N only).
        wrapper = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
            " os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(to_r), str(from_w), *cmd],
            pass_fds=(to_r, from_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._id = 0
        self.session = ""

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(raw))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._next(deadline))

    def open_page(self) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors/warnings and failed loads seen so far."""
        out = []
        for ev in self.events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "warning",
                "assert",
            ):
                out.append(json.dumps(p.get("args"))[:300])
            elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(p["entry"].get("text", "")[:300])
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


def _centre_of(path: str, scroll: bool = False) -> str:
    """JS giving the viewport centre [x, y] of the drawn node that shows layer `path`."""
    return f"""(() => {{
        const owner = JSON.parse(document.getElementById('cnndsl-data').textContent).owner;
        const el = document.getElementById(owner['{path}']);
        {"el.scrollIntoView({block: 'center', inline: 'center'});" if scroll else ""}
        const r = el.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    }})()"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium (apt-get install chromium)")


@needs_dot
@pytest.mark.skipif(sys.platform != "linux", reason="uses fd passing to chromium")
def test_report_in_headless_chromium(nets: dict[str, Graph], tmp_path: Path) -> None:
    binary = _chromium()
    g = nets["resnet34"]
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"history": HISTORY}))
    page = tmp_path / "report.html"
    assert (
        main(
            [
                "plot",
                str(ROOT / "specs" / "resnet34.cnn"),
                "--history",
                str(history),
                "-o",
                str(page),
            ]
        )
        == 0
    )
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><title>x</title><script>undefinedFunction()</script>")
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.open_page()
        # The error collector works: a page with a script error is caught.
        browser.goto(broken.as_uri())
        assert browser.problems()
        browser.events.clear()

        browser.goto(page.as_uri())
        assert browser.js("document.body.getAttribute('data-ready')") == "1"
        drawn = browser.js("document.querySelectorAll('#diagram g.node').length")
        assert drawn == len(g) + len(g.outputs)
        assert browser.js("document.querySelector('img.curves').naturalWidth") > 200
        # A real mouse click on the projection shortcut's conv shows its details.
        target = "residual_unit_4/conv_3"
        x, y = browser.js(_centre_of(target, scroll=True))
        browser.click(x, y)
        details = browser.js("document.getElementById('details').innerText")
        assert browser.js("document.getElementById('details').dataset.selected") == target
        layer = g[target]
        rf = "×".join(map(str, layer.receptive or ()))
        for text in (
            "conv 1×1/2, 128",
            "[28, 28, 128]",
            f"{layer.params:,}",
            f"{layer.macs:,}",
            f"{rf} pixels",
            "residual_unit_3/relu_2 [56, 56, 64]",
            "stride=(2, 2)",
        ):
            assert text in details, (text, details)
        assert browser.js("location.hash") == "#node=" + target.replace("/", "%2F")
        assert browser.js("document.querySelectorAll('g.selected').length") == 1
        # Hovering another node shows it; moving off it returns to the selection.
        x, y = browser.js(_centre_of("residual_unit_4/conv_1"))
        browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        assert browser.js("document.querySelector('#details h2').textContent") == (
            "conv 3×3/2, 128"
        )
        browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=5, y=5)
        assert browser.js("document.querySelector('#details h2').textContent") == (
            "conv 1×1/2, 128"
        )
        shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
        (tmp_path / "report.png").write_bytes(shot)
        with Image.open(tmp_path / "report.png") as img:
            assert img.size == (1400, 900)
            assert len(np.unique(np.asarray(img.convert("L")))) > 20  # not a blank page
        assert browser.problems() == []
    finally:
        browser.close()


@needs_dot
def test_report_screenshot_with_a_node_selected_by_url(tmp_path: Path) -> None:
    """Chromium's own --screenshot and --dump-dom, with #node=PATH selecting a layer."""
    binary = _chromium()
    page = tmp_path / "se.html"
    assert (
        main(
            [
                "plot",
                str(LANG / "se_xception.cnn"),
                "--block",
                "se",
                "--input-shape",
                "28,28,64",
                "-o",
                str(page),
            ]
        )
        == 0
    )
    flags = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,800",
    ]
    url = page.as_uri() + "#node=se_1/dense_1"
    shot = tmp_path / "se.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", url], check=True, timeout=60, capture_output=True
    )
    with Image.open(shot) as img:
        assert img.size == (1200, 800)
    dom = subprocess.run(
        [*flags, "--dump-dom", url], check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'data-selected="se_1/dense_1"' in dom
    assert "dense 4, relu" in dom and "[4]" in dom and "260" in dom
