"""Broken specs: each gets one diagnostic with a stable code, message, line and column."""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl.source import CnnError

NET = "network n() {{\n    input x: [28, 28, 1]\n{body}\n}}\n"


def net(body: str) -> str:
    """A network around `body` (which starts on line 3)."""
    return NET.format(body=body)


# (id, spec, code, message fragment, line, col)
CASES = [
    ("unknown_op", net("    return x -> conv2(3, 3)"), "E010", "did you mean 'conv'", 3, 17),
    (
        "unknown_arg",
        net("    return x -> conv(8, 3, kernal=3)"),
        "E011",
        "no argument 'kernal'; did you mean 'kernel'",
        3,
        28,
    ),
    ("missing_arg", net("    return x -> conv(8)"), "E012", "needs argument 'kernel'", 3, 17),
    (
        "bad_padding",
        net("    return x -> conv(8, 3, padding=sam)"),
        "E012",
        "did you mean 'same'",
        3,
        28,
    ),
    ("float_kernel", net("    return x -> conv(8, 3.5)"), "E012", "not 3.5", 3, 25),
    (
        "negative_filters",
        net("    return x -> conv(-2, 3)"),
        "E012",
        "argument 'filters' must be a whole number >= 1",
        3,
        22,
    ),
    (
        "dense_on_map",
        net("    return x -> conv(8, 3) -> dense(10)"),
        "E041",
        "add flatten or global_avgpool",
        3,
        31,
    ),
    (
        "add_mismatch",
        net("    a = x -> conv(8, 3)\n    b = x -> conv(8, 3, stride=2)\n    return a + b"),
        "E031",
        "cannot add tensors of shapes [26, 26, 8] and [13, 13, 8]",
        5,
        12,
    ),
    (
        "concat_mismatch",
        net("    a = x -> maxpool(2)\n    return concat(x, a)"),
        "E031",
        "cannot concat",
        4,
        12,
    ),
    (
        "kernel_too_big",
        "network n() {\n    input x: [5, 5, 1]\n    return x -> conv(8, 7)\n}",
        "E041",
        "output height would be -1",
        3,
        17,
    ),
    (
        "self_recursion",
        "block b() { return input -> b }\nnetwork n() {\n    input x: [5, 5, 1]\n"
        "    return x -> b\n}",
        "E052",
        "block 'b' calls itself",
        1,
        29,
    ),
    (
        "mutual_recursion",
        "block a() { return input -> b }\nblock b() { return input -> a }\n"
        "network n() {\n    input x: [5, 5, 1]\n    return x -> a\n}",
        "E052",
        "a -> b -> a",
        2,
        29,
    ),
    ("undefined_name", net("    return y -> relu"), "E013", "undefined name 'y'", 3, 12),
    (
        "typo_binding",
        net("    feats = x -> relu\n    return featz -> relu"),
        "E013",
        "did you mean 'feats'",
        4,
        12,
    ),
    (
        "assert_fails",
        net('    assert x.channels == 3, "needs RGB"\n    return x'),
        "E040",
        "assertion failed: needs RGB",
        3,
        12,
    ),
    (
        "statement_conditional",
        net("    x = x -> conv(8, 3) if true else x\n    return x"),
        "E006",
        "needs parentheses",
        3,
        33,
    ),
    (
        "budget",
        net("    budget { params <= 10 }\n    return x -> conv(8, 3)"),
        "E080",
        "params is 80",
        3,
        14,
    ),
    (
        "unclosed_brace",
        "network n() {\n    input x: [28, 28, 1]\n    return x -> relu\n",
        "E002",
        "unclosed `{` opened at 1:13",
        1,
        13,
    ),
    (
        "unclosed_paren",
        net("    y = x -> conv(8, 3\n    return y"),
        "E002",
        "unclosed `(` opened at 3:18",
        3,
        18,
    ),
    (
        "stray_closer",
        "network n() {\n    input x: [1]\n    return x)\n}",
        "E003",
        "`)` closes nothing",
        3,
        13,
    ),
    (
        "return_without_value",
        "network n() {\n    input x: [1]\n    return\n}",
        "E004",
        "`return` needs a value",
        3,
        11,
    ),
    (
        "bare_expression",
        net("    x -> relu\n    return x"),
        "E006",
        "a bare expression does nothing",
        3,
        7,
    ),
    ("missing_arrow", net("    y = x conv(3, 3)\n    return y"), "E006", "joined with `->`", 3, 15),
    (
        "keyword_as_name",
        net("    train = 1\n    return x"),
        "E006",
        "keyword used as a name",
        3,
        11,
    ),
    (
        "bad_character",
        net("    return x -> conv(8, 3) $"),
        "E001",
        "unexpected character '$'",
        3,
        28,
    ),
    (
        "single_quotes",
        net("    return x -> dense(2, name='a')"),
        "E001",
        "strings use double quotes",
        3,
        31,
    ),
    ("no_input", "network n() {\n    return 1\n}", "E028", "tensors, not number", 2, 12),
    (
        "network_no_input_decl",
        "block b() { return input }\nnetwork n() {\n    return input\n}",
        "E025",
        "`input` refers to a block's input",
        3,
        12,
    ),
    ("arrow_to_number", net("    return x -> 3"), "E036", "needs a layer on its right", 3, 17),
    ("repeat_zero", net("    return x -> relu * 0"), "E033", "count must be >= 1", 3, 17),
    (
        "list_for",
        net("    for i in 3 {\n        x = x -> relu\n    }\n    return x"),
        "E030",
        "`for` needs a list",
        3,
        14,
    ),
    (
        "height_of_vector",
        net("    v = x -> flatten\n    h = v.height\n    return x"),
        "E037",
        "has no height",
        4,
        9,
    ),
    (
        "unknown_tensor_attr",
        net("    c = x.chanels\n    return x"),
        "E037",
        "did you mean 'channels'",
        3,
        9,
    ),
    (
        "duplicate_name",
        net('    a = x -> relu(name="r")\n    return a -> relu(name="r")'),
        "E053",
        "two layers named 'r'",
        4,
        17,
    ),
    (
        "block_param_missing",
        "block b(f) { return input -> conv(f, 1) }\n" + net("    return x -> b"),
        "E012",
        "needs parameter 'f'",
        4,
        17,
    ),
    (
        "block_bad_param",
        "block b(f) { return input -> conv(f, 1) }\n" + net("    return x -> b(f=2, g=3)"),
        "E011",
        "has no argument 'g'",
        4,
        24,
    ),
    ("division_by_zero", net("    n = 4 // 0\n    return x"), "E034", "division by zero", 3, 9),
    (
        "train_unknown_setting",
        net("    train { epoch = 3 }\n    return x"),
        "E071",
        "did you mean 'epochs'",
        3,
        13,
    ),
    (
        "input_in_block",
        "block b() {\n    input y: [1]\n    return input\n}\n" + net("    return x -> b"),
        "E022",
        "declares a network input",
        2,
        5,
    ),
    (
        "defaults_unknown_arg",
        "defaults conv(kernal=3)\n" + net("    return x"),
        "E011",
        "did you mean 'kernel'",
        1,
        1,
    ),
    ("groups_mismatch", net("    return x -> conv(8, 3, groups=2)"), "E041", "groups", 3, 17),
    (
        "duplicate_definition",
        "block b() { return input }\nblock b() { return input }\n" + net("    return x"),
        "E050",
        "'b' is defined twice",
        2,
        1,
    ),
    (
        "import_missing",
        'import "nowhere.cnn"\n' + net("    return x"),
        "E060",
        "no such file",
        1,
        1,
    ),
    (
        "import_zoo_unknown",
        "import zoo.resnet343\n" + net("    return x"),
        "E060",
        "did you mean 'resnet34'",
        1,
        1,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_spec_is_reported_where_the_user_must_act(case: tuple) -> None:
    _, text, code, fragment, line, col = case
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text)
    d = info.value.diagnostics[0]
    assert d.code == code, str(info.value)
    assert fragment in d.message, str(info.value)
    assert d.span is not None
    assert (d.span.line, d.span.col) == (line, col), str(info.value)


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


def test_rendering_has_location_source_line_and_caret() -> None:
    with pytest.raises(CnnError) as info:
        cnndsl.compile(net("    return x -> conv2(3, 3)"))
    lines = str(info.value).splitlines()
    assert (
        lines[0] == "<string>:3:17: error[E010]: unknown op or block 'conv2'; did you mean 'conv'?"
    )
    assert lines[1] == "        return x -> conv2(3, 3)"
    assert lines[2] == "                    ^~~~~"


def test_shape_error_shows_its_working_and_both_origins() -> None:
    text = net("    a = x -> conv(8, 5, stride=2)\n    b = x -> conv(8, 3)\n    return a + b")
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text)
    rendered = str(info.value)
    assert "conv_1: [12, 12, 8] from line 3 (conv 5×5/2, 8)" in rendered
    assert "conv_2: [26, 26, 8] from line 4 (conv 3×3, 8)" in rendered


def test_stride_working_is_shown() -> None:
    text = "network n() {\n    input x: [3, 3, 1]\n    return x -> conv(8, 5, stride=2)\n}"
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text)
    assert "working: (3 - 5 + 0)/2 + 1 = 0" in str(info.value)


def test_partial_graph_is_kept_up_to_the_failure() -> None:
    text = net("    y = x -> conv(8, 3) -> maxpool(2)\n    return y -> dense(3)")
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text)
    partial = info.value.partial
    assert [layer.path for layer in partial] == ["x", "conv_1", "maxpool_1"]


def test_warning_for_unread_pixels() -> None:
    text = "network n() {\n    input x: [28, 28, 1]\n    return x -> conv(4, 3, stride=2)\n}"
    warnings = cnndsl.compile(text).warnings
    assert [w.code for w in warnings] == ["W001"]
    assert "never reads the last 1 rows and 1 columns" in warnings[0].message
    assert "working: (28 - 3 + 2·0) % 2 = 1; (28 - 3 + 2·0) % 2 = 1" in warnings[0].notes
    assert cnndsl.compile(text.replace("stride=2", "stride=5")).warnings == []


def test_no_warning_when_only_padding_is_unread() -> None:
    text = (
        "network n() {\n    input x: [224, 224, 3]\n"
        "    return x -> zeropad(3) -> conv(4, 7, stride=2)\n}"
    )
    assert cnndsl.compile(text).warnings == []  # the unread row is zero padding
    one_sided = text.replace("zeropad(3)", "zeropad(((2, 0), (2, 0)))")
    assert [w.code for w in cnndsl.compile(one_sided).warnings] == ["W001"]


def test_no_warning_for_windows_narrower_than_the_stride() -> None:
    text = "network n() {\n    input x: [28, 28, 8]\n    return x -> conv(4, 1, stride=2)\n}"
    assert cnndsl.compile(text).warnings == []


def test_non_utf8_file(tmp_path) -> None:
    path = tmp_path / "bad.cnn"
    path.write_bytes(b"network n() { \xff\xfe }")
    with pytest.raises(CnnError) as info:
        cnndsl.compile(path)
    assert info.value.diagnostics[0].code == "E063"


def test_import_cycle(tmp_path) -> None:
    (tmp_path / "a.cnn").write_text('import "b.cnn"\nblock x() { return input }')
    (tmp_path / "b.cnn").write_text('import "a.cnn"\nblock y() { return input }')
    (tmp_path / "main.cnn").write_text(
        'import "a.cnn"\nnetwork n() {\n input i: [1]\n return i -> x\n}'
    )
    with pytest.raises(CnnError) as info:
        cnndsl.compile(tmp_path / "main.cnn")
    assert info.value.diagnostics[0].code == "E061"
    assert "import cycle" in info.value.diagnostics[0].message


def test_import_clash_names_both_definitions(tmp_path) -> None:
    (tmp_path / "lib.cnn").write_text("block unit() { return input }")
    (tmp_path / "main.cnn").write_text(
        'import "lib.cnn"\nblock unit() { return input }\n'
        "network n() {\n input i: [1]\n return i -> unit\n}"
    )
    with pytest.raises(CnnError) as info:
        cnndsl.compile(tmp_path / "main.cnn")
    notes = "\n".join(info.value.diagnostics[0].notes)
    assert "lib.cnn:1:1" in notes and "main.cnn:2:1" in notes


def test_runaway_loop_is_refused() -> None:
    text = net("    for i in range(5000) {\n        x = x -> relu\n    }\n    return x")
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text, max_layers=1000)
    assert info.value.diagnostics[0].code == "E090"


@pytest.mark.parametrize(
    "body",
    [
        "    return x -> conv(99999999999, 3)",
        "    return x -> flatten -> dense(10_000_000_000)",
        "    return x -> zeropad(100000000)",
    ],
)
def test_sizes_that_cannot_be_allocated_are_refused(body: str) -> None:
    with pytest.raises(CnnError) as info:
        cnndsl.compile(net(body))
    d = info.value.diagnostics[0]
    assert d.code == "E091" and "too" in d.message


def test_a_spec_over_the_source_limit_is_refused(tmp_path) -> None:
    path = tmp_path / "huge.cnn"
    path.write_text("# padding\n" * 110_000)
    with pytest.raises(CnnError) as info:
        cnndsl.compile(path)
    assert info.value.diagnostics[0].code == "E065"


def test_importing_a_non_cnn_file_is_refused(tmp_path) -> None:
    (tmp_path / "evil.py").write_text("import os")
    (tmp_path / "main.cnn").write_text('import "evil.py"\n' + net("    return x"))
    with pytest.raises(CnnError) as info:
        cnndsl.compile(tmp_path / "main.cnn")
    assert info.value.diagnostics[0].code == "E062"


def test_deeply_nested_brackets_are_a_diagnostic() -> None:
    with pytest.raises(CnnError) as info:
        cnndsl.compile(net("    y = " + "[" * 3000 + "1" + "]" * 3000 + "\n    return x"))
    assert info.value.diagnostics[0].code in ("E092",)
