"""What pictures say about their sources: the curves' title, the report's spec file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
