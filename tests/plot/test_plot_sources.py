"""What pictures say about their sources: the curves' title, the report's spec file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.cli import main
from cnndsl.plot import curves
from cnndsl.plot.report import report_html

HISTORY = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}


def test_curves_are_titled_with_the_network(tmp_path: Path, monkeypatch: Any) -> None:
    titles: list[str] = []
    draw = curves.draw_history

    def spy(series: Any, epochs: Any, title: str = "") -> Any:
        titles.append(title)
        return draw(series, epochs, title=title)

    monkeypatch.setattr(curves, "draw_history", spy)
    recorded = tmp_path / "run-3.json"  # as `cnndsl run --history` writes it
    recorded.write_text(json.dumps({"history": HISTORY, "epoch": [0, 1], "spec": "digits_cnn"}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(HISTORY))
    assert main(["plot", str(recorded), "-o", str(tmp_path / "a.png")]) == 0
    assert main(["plot", str(bare), "-o", str(tmp_path / "b.png")]) == 0
    assert titles == ["digits_cnn", "bare"]
    assert curves.load_history(recorded).network == "digits_cnn"
    assert curves.load_history(bare).network is None


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_report_names_the_spec_file_without_its_folder(tmp_path: Path) -> None:
    spec = tmp_path / "private-folder" / "tiny.cnn"
    spec.parent.mkdir()
    spec.write_text("network tiny() {\n    input x: [4, 4, 1]\n    return x -> flatten\n}\n")
    page = report_html(cnndsl.compile(spec).graph)
    assert "<code>tiny.cnn</code>" in page
    assert "private-folder" not in page and str(tmp_path) not in page


def test_cell_numbers_sit_above_the_cells_not_on_them() -> None:
    from cnndsl.plot import maps

    kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 6))
    fig = maps.draw_filters(kernel, "k")
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert [t.get_text() for t in numbers] == [str(i) for i in range(6)]
    for t in numbers:
        x, y = t.get_position()  # the text's bottom-left, in pixel coordinates
        row, col = int(round(y + 0.5)) - 1, int(round(x + 0.5))
        assert np.ma.is_masked(image[row, col]), "the number covers a kernel value"
        assert not np.ma.is_masked(image[row + 1, col]), "the cell starts right below"


def test_an_edge_into_a_block_stops_at_its_border() -> None:
    from cnndsl.plot import draw

    text = """block unit(f) {
    return relu(input + (input -> conv(f, 3, padding=same)))
}
network n() {
    input x: [8, 8, 4]
    return x -> conv(4, 3, padding=same) -> unit(4) -> flatten
}"""
    d = draw(cnndsl.compile(text).graph)
    dom_id = d.clusters["unit_1"][0]
    into = [line for line in d.dot.body if "->" in line and "lhead" in line]
    # The edge to the block's first layer ends at the cluster (above its label); the
    # skip into the block's add still reaches the add itself.
    assert len(into) == 1 and f"cluster_{dom_id}" in into[0] and "unit_1/conv_1" in into[0]
    skip = [line for line in d.dot.body if "->" in line and "unit_1/add_1" in line]
    assert skip and all("lhead" not in line for line in skip)
