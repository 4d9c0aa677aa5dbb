"""W001 at its boundaries: a strided window that never reads the last rows or columns.

The warning fires where (N - F + 2P) % S leaves rows unread, and only for windows
at least as wide as their stride (F >= S; a narrower window skips rows by design)
whose unread rows are not all zeros a zeropad put there. Expected rows are worked
out by hand in each case's comment, and checked through `cnndsl.compile`.
"""

from __future__ import annotations

import pytest

import cnndsl


def warnings_for(size: int | tuple[int, int], chain: str) -> list[str]:
    h, w = (size, size) if isinstance(size, int) else size
    net = cnndsl.compile(
        f"network n() {{\n    input x: [{h}, {w}, 2]\n    return x -> {chain}\n}}\n"
    )
    return [f"{d.code}: {d.message}" for d in net.warnings]


@pytest.mark.parametrize(
    ("size", "chain", "unread"),
    [
        # window equal to stride: (5 - 2) % 2 = 1 row and column left over
        (5, "maxpool(2)", "1 rows and 1 columns"),
        (5, "avgpool(2, stride=2)", "1 rows and 1 columns"),
        # F = S = 3: (7 - 3) % 3 = 1
        (7, "conv(4, 3, stride=3)", "1 rows and 1 columns"),
        # F = S + 1: (8 - 4) % 3 = 1
        (8, "conv(4, 4, stride=3)", "1 rows and 1 columns"),
        # explicit padding: (6 - 3 + 2·1) % 2 = 1
        (6, "conv(4, 3, stride=2, padding=1)", "1 rows and 1 columns"),
        # only the axis whose window reaches its stride: rows F = 3 = S, columns F = 2 < S
        (7, "conv(4, (3, 2), stride=3)", "1 rows"),
        # rows (9 - 3) % 3 = 0 read to the end; columns (8 - 3) % 3 = 2
        ((9, 8), "maxpool(3)", "2 columns"),
        # a zeropad's trailing zeros do not excuse more rows than it added: (5 - 3) % 3 = 2 > 1
        (4, "zeropad(((0, 1), (0, 1))) -> maxpool(3)", "2 rows and 2 columns"),
        # zeros added at the top/left are read; the bottom/right rows are real data
        (4, "zeropad(((1, 0), (1, 0))) -> maxpool(2)", "1 rows and 1 columns"),
    ],
)
def test_warns_with_the_rows_left_unread(size: int, chain: str, unread: str) -> None:
    (warning,) = warnings_for(size, chain)
    assert warning.startswith("W001: ") and f"never reads the last {unread} of its input" in warning


@pytest.mark.parametrize(
    ("size", "chain"),
    [
        (6, "maxpool(2)"),  # (6 - 2) % 2 = 0
        (7, "conv(4, 3, stride=2)"),  # (7 - 3) % 2 = 0
        # window one less than its stride: (7 - 2) % 3 = 2 rows skipped, by design
        (7, "conv(4, 2, stride=3)"),
        (7, "maxpool(2, stride=3)"),
        # a strided 1×1 projection: (6 - 1) % 2 = 1, skipped by design
        (6, "conv(4, 1, stride=2)"),
        (5, "maxpool(2, padding=same)"),
        (5, "conv(4, 3, stride=3, padding=same)"),
        # the one row left unread is the zero a zeropad added: (5 - 2) % 2 = 1 = 1 trailing
        (4, "zeropad(((0, 1), (0, 1))) -> maxpool(2)"),
        # (7 - 3) % 3 = 1 row left, 2 trailing zeros: nothing of the data is lost
        (5, "zeropad(((0, 2), (0, 2))) -> conv(4, 3, stride=3)"),
        (5, "maxpool(1, stride=1)"),
    ],
)
def test_no_warning(size: int, chain: str) -> None:
    assert warnings_for(size, chain) == []


def test_the_warning_shows_its_working_and_the_layer() -> None:
    net = cnndsl.compile(
        'network n() {\n    input x: [7, 7, 1]\n    return x -> conv(2, 3, stride=3, name="c")\n}\n'
    )
    (d,) = net.warnings
    assert d.severity == "warning" and d.span is not None and d.span.line == 3
    assert "working: (7 - 3 + 2·0) % 3 = 1; (7 - 3 + 2·0) % 3 = 1" in d.notes
    assert "note: layer 'c'; padding=same would read them" in d.notes
