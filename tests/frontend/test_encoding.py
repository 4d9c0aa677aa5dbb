"""A spec that is not UTF-8 is reported at the line and column of its first bad byte."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnndsl


def test_not_utf8_is_located(tmp_path: Path) -> None:
    spec = tmp_path / "latin1.cnn"
    spec.write_bytes(
        "network n() {\n    input x: [4, 4, 1]  # café\n    return x\n}\n".encode("latin-1")
    )
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.compile(spec)
    (d,) = info.value.diagnostics
    assert d.code == "E063" and d.span is not None
    assert (d.span.file, d.span.line, d.span.col) == (str(spec), 2, 30)
    text = str(info.value)
    assert f"{spec}:2:30: error[E063]" in text and "byte 43 is 0xe9" in text
    assert text.splitlines()[2].index("^") == text.splitlines()[1].index("caf") + 3


def test_not_utf8_import_is_located_in_the_imported_file(tmp_path: Path) -> None:
    (tmp_path / "blocks.cnn").write_bytes(b"# \xff\nblock b() {\n    return input\n}\n")
    main = tmp_path / "main.cnn"
    main.write_text('import "blocks.cnn"\nnetwork n() {\n    input x: [4, 4, 1]\n    return x\n}\n')
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.compile(main)
    (d,) = info.value.diagnostics
    assert d.code == "E063" and d.span is not None
    assert (Path(d.span.file).name, d.span.line, d.span.col) == ("blocks.cnn", 1, 3)
    assert d.notes == (f"note: imported at {main}:1:1",)
