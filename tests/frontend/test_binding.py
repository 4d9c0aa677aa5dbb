"""Argument binding: one binder, so a mistake gets the same code wherever arguments are bound.

Op calls, block calls, `defaults` statements and block and network
parameters all bind through `cnndsl.ops.attrs.Signature`; the code of a
refusal travels on the AttrError from where it was raised.
"""

from __future__ import annotations

import re

import pytest

import cnndsl
from cnndsl.frontend.grammar import resource_path
from cnndsl.ops import OPS
from cnndsl.ops.attrs import Signature
from cnndsl.ops.errors import AttrError
from cnndsl.source import CnnError, Diagnostic

NET = "network n() {{\n    input x: [28, 28, 1]\n{body}\n}}\n"
BLOCK = "block b(f) { return input -> conv(f, 1) }\n"


def net(body: str, header: str = "") -> str:
    """A network around `body`, after `header`; the body starts on line 3 + header lines."""
    return header + NET.format(body=body)


def diagnostic(text: str, **params: object) -> Diagnostic:
    """The first diagnostic of a spec that must fail to compile."""
    with pytest.raises(CnnError) as info:
        cnndsl.compile(text, **params)
    return info.value.diagnostics[0]


# (id, spec, code, message fragment, line, col): the same mistakes in each binder
CASES = [
    # too many positional arguments
    (
        "op_positional",
        net("    return x -> conv(8, 3, 1, 2)"),
        "E012",
        "conv takes at most 3 positional arguments (filters, kernel, stride), got 4",
        3,
        17,
    ),
    (
        "block_positional",
        net("    return x -> b(1, 2)", BLOCK),
        "E012",
        "b takes at most 1 positional argument (f), got 2",
        4,
        17,
    ),
    (
        "defaults_positional",
        net("    return x", "defaults conv(8, 3, 1, 2)\n"),
        "E012",
        "conv takes at most 3 positional arguments (filters, kernel, stride), got 4",
        1,
        1,
    ),
    # a name given both by position and by keyword
    (
        "op_twice",
        net("    return x -> conv(8, 3, kernel=3)"),
        "E016",
        "argument 'kernel' given twice (also positionally)",
        3,
        28,
    ),
    (
        "block_twice",
        net("    return x -> b(2, f=3)", BLOCK),
        "E016",
        "argument 'f' given twice (also positionally)",
        4,
        22,
    ),
    (
        "defaults_twice",
        net("    return x", "defaults conv(8, filters=4)\n"),
        "E016",
        "argument 'filters' given twice (also positionally)",
        1,
        1,
    ),
    # the same keyword twice, and a positional argument after a keyword
    (
        "op_keyword_twice",
        net("    return x -> conv(8, 3, stride=1, stride=2)"),
        "E016",
        "argument 'stride' given twice",
        3,
        38,
    ),
    (
        "defaults_keyword_twice",
        net("    return x", "defaults conv(kernel=3, kernel=5)\n"),
        "E016",
        "argument 'kernel' given twice",
        1,
        25,
    ),
    (
        "defaults_positional_after_keyword",
        net("    return x", "defaults conv(kernel=3, 5)\n"),
        "E015",
        "a positional argument after a keyword argument",
        1,
        25,
    ),
    # unknown names
    (
        "block_unknown",
        net("    return x -> b(g=3)", BLOCK),
        "E011",
        "b has no argument 'g'",
        4,
        19,
    ),
    (
        "defaults_block_unknown",
        net("    return x", BLOCK + "defaults b(ff=3)\n"),
        "E011",
        "b has no argument 'ff'; did you mean 'f'?",
        2,
        1,
    ),
    # missing required arguments and parameters
    (
        "network_param_missing",
        "network n(k) {\n    input x: [8, 8, 1]\n    return x -> conv(k, 1)\n}",
        "E012",
        "network 'n' needs parameter 'k'",
        1,
        11,
    ),
    # a positional argument's span skips the tensor operands before it
    (
        "value_after_tensor",
        net("    return conv(x, -2, 3)"),
        "E012",
        "argument 'filters' must be a whole number >= 1, not -2",
        3,
        20,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_binder_reports_the_same_mistake_the_same_way(case: tuple) -> None:
    _, text, code, fragment, line, col = case
    d = diagnostic(text)
    assert d.code == code, d.message
    assert fragment in d.message, d.message
    assert d.span is not None
    assert (d.span.line, d.span.col) == (line, col), d.message


def test_unknown_argument_names_what_the_callee_takes() -> None:
    d = diagnostic(net("    return x -> conv(8, 3, kernal=3)"))
    assert d.message == "conv has no argument 'kernal'; did you mean 'kernel'?"
    takes = ", ".join([*OPS["conv"].attrs, "name", "trainable"])
    assert d.notes == (f"note: conv takes: {takes}",)
    d = diagnostic(net("    return x", "defaults conv(kernal=3)\n"))
    assert d.code == "E011" and d.notes == (f"note: conv takes: {takes}",)


def test_network_and_block_parameters_bind_like_arguments(tmp_path) -> None:
    text = "network n(k=2) {\n    input x: [8, 8, 3]\n    return x -> conv(k, 1)\n}"
    d = diagnostic(text, kk=1)
    assert d.code == "E011"
    assert d.message == "network 'n' has no parameter 'kk'; did you mean 'k'?"
    assert d.notes == ("note: network 'n' takes: k",)
    path = tmp_path / "lib.cnn"
    path.write_text(BLOCK)
    with pytest.raises(CnnError) as info:
        cnndsl.compile_block(path, "b", (4, 4, 1), g=1)
    assert info.value.diagnostics[0].code == "E011"
    assert info.value.diagnostics[0].message == "block 'b' has no parameter 'g'"
    with pytest.raises(CnnError) as info:
        cnndsl.compile_block(path, "b", (4, 4, 1))
    assert info.value.diagnostics[0].code == "E012"
    assert info.value.diagnostics[0].message == "block 'b' needs parameter 'f'"
    assert cnndsl.compile_block(path, "b", (4, 4, 1), f=3).output_shape == (4, 4, 3)


def test_parameter_defaults_may_read_earlier_parameters() -> None:
    header = "block b(f, g=f * 2) { return input -> conv(g, 1) }\n"
    assert cnndsl.compile(net("    return x -> b(3)", header)).output_shape == (28, 28, 6)
    assert cnndsl.compile(net("    return x -> b(3, g=5)", header)).output_shape == (28, 28, 5)


def test_defaults_bind_positionally_and_by_keyword() -> None:
    text = net("    return x -> conv(4)", "defaults conv(8, 5, padding=same)\n")
    attrs = cnndsl.compile(text).graph["conv_1"].attrs
    assert (attrs["filters"], attrs["kernel"], attrs["padding"]) == (4, (5, 5), "same")


# ---- a bare name the op refuses: a mistyped option or an undefined variable ----


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ("    return x -> conv(8, 3, activation=rellu)", "E012", "did you mean 'relu'"),
        ("    return x -> conv(8, 3, padding=vaild)", "E012", "did you mean 'valid'"),
        ("    return x -> conv(8, 3, activation=zzz)", "E013", "undefined name 'zzz'"),
        ("    return x -> conv(8, k)", "E013", "undefined name 'k'"),
    ],
)
def test_a_refused_bare_name_is_an_option_typo_or_an_undefined_name(
    body: str, code: str, fragment: str
) -> None:
    d = diagnostic(net(body))
    assert d.code == code and fragment in d.message, d.message


# ---- the binder itself, and the codes it puts on its errors ----


def test_signature_names_positionals_in_order_then_keywords() -> None:
    sig = Signature("f", ("a", "b", "c"), ("a", "b"))
    assert sig.bind((1,), {"c": 3}) == {"a": 1, "c": 3}
    assert sig.bind((1, 2), {"c": 3}) == {"a": 1, "b": 2, "c": 3}
    assert sig.bind() == {}
    with pytest.raises(AttrError) as info:
        sig.bind((1, 2, 3))  # c is keyword-only
    assert (info.value.code, info.value.attr) == ("E012", None)
    assert info.value.message == "f takes at most 2 positional arguments (a, b), got 3"
    missing = sig.missing("b", "a number")
    assert (missing.code, missing.attr, missing.message) == (
        "E012",
        "b",
        "f needs argument 'b' (a number)",
    )


@pytest.mark.parametrize(
    ("args", "kw", "code", "attr"),
    [
        ((8, 3, 1, 2), {}, "E012", None),  # too many positional
        ((8, 3), {"kernal": 3}, "E011", "kernal"),  # unknown
        ((8, 3), {"kernel": 3}, "E016", "kernel"),  # given twice
        ((8,), {}, "E012", "kernel"),  # missing
        ((8, 3.5), {}, "E012", "kernel"),  # ill-typed
        ((8, 3), {"padding": "sam"}, "E012", "padding"),  # not an option
        ((7, 3), {"groups": 2}, "E012", "groups"),  # a cross-argument check
    ],
)
def test_op_bind_errors_carry_their_code(
    args: tuple, kw: dict, code: str, attr: str | None
) -> None:
    with pytest.raises(AttrError) as info:
        OPS["conv"].bind(*args, **kw)
    assert (info.value.code, info.value.attr) == (code, attr), info.value.message


def test_unknown_argument_error_reads_whole_outside_the_compiler() -> None:
    with pytest.raises(AttrError) as info:
        OPS["dense"].bind(10, bais=True)
    assert info.value.suggestion == "bias"
    assert str(info.value).splitlines() == [
        "dense has no argument 'bais'; did you mean 'bias'?",
        f"  note: dense takes: {', '.join(OPS['dense'].attrs)}",
    ]


# ---- keywords cannot be parameter names: the parser says so first ----

GRAMMAR = (resource_path("grammars") / "cnn.lark").read_text()
KEYWORDS = sorted(set(re.findall(r'"([a-z]+)"', GRAMMAR)))


def test_the_keyword_list_is_the_grammars() -> None:
    assert {"network", "block", "input", "train", "true", "not"} <= set(KEYWORDS)


@pytest.mark.parametrize("keyword", KEYWORDS)
@pytest.mark.parametrize(
    "template",
    ["network n({kw}) {{ input x: [1] return x }}", "block b(f, {kw}=1) {{ return input }}"],
)
def test_a_keyword_as_parameter_name_is_a_syntax_error(template: str, keyword: str) -> None:
    text = template.format(kw=keyword)
    d = diagnostic(text)
    assert d.code in ("E005", "E006"), d.message  # the parser's diagnostics
    assert d.span is not None
    assert (d.span.line, d.span.col) == (1, template.index("{kw}") + 1), d.message
