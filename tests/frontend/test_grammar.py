"""The grammar: every rule parses a snippet; shipped specs parse; LALR has no conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Lark

from cnndsl.frontend import syntax as ast
from cnndsl.frontend.grammar import parser, resource_path
from cnndsl.frontend.parse import parse
from cnndsl.frontend.syntax_errors import SYNTAX_ERRORS

ROOT = Path(__file__).resolve().parents[2]


def test_grammar_is_conflict_free() -> None:
    # strict=True turns any shift/reduce conflict into an error instead of a log line.
    Lark.open(str(resource_path("grammars") / "cnn.lark"), parser="lalr", strict=True)


SNIPPETS = {
    "import_path": 'import "blocks.cnn"',
    "import_module": "import zoo.xception",
    "defaults": "defaults conv(kernel=3, padding=same)",
    "block": "block b(f, s=1) { return input }",
    "network": "network n(classes=10) { input x: [8, 8, 1] return x }",
    "chain": "network n() { input x: [8, 8, 1] return x -> conv(3, 3) -> relu }",
    "repeat": "network n() { input x: [8, 8, 1] return x -> conv(3, 3) * 2 }",
    "if_else": "network n() { input x: [1] if 1 > 2 { y = 1 } else if true { y = 2 } else"
    " { y = 3 } return x }",
    "for": "network n() { input x: [1] for i in range(3) { x = x -> relu } return x }",
    "ifexp": "network n() { input x: [1] y = (1 if true else 2) return x }",
    "arith": "network n() { input x: [1] y = -1 + 2 * 3 // 2 % 5 - 4 / 2 return x }",
    "logic": 'network n() { input x: [1] assert not false and (true or false), "m" return x }',
    "lists": "network n() { input x: [1] y = [1, 2,] * 2 + [3] return x }",
    "tuple": "network n() { input x: [4, 4, 1] return x -> conv(1, (1, 3),) }",
    "attr_index": "network n() { input x: [4, 4, 1] y = x.shape[0] return x }",
    "train": "network n() { input x: [1] train { optimizer = sgd(lr=0.1) metrics = [accuracy] }"
    " return x }",
    "budget": "network n() { input x: [1] budget { params <= 1_000 macs < 1e6 } return x }",
    "comment": "# hello\nnetwork n() { # inline\n input x: [1] return x }",
}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_parses(name: str) -> None:
    module = parse(SNIPPETS[name], "snippet.cnn")
    assert isinstance(module, ast.Module)


def test_precedence_arrow_looser_than_plus() -> None:
    module = parse("network n() { return a + b -> relu }")
    ret = module.definitions[0].body[0]
    assert isinstance(ret, ast.Return)
    assert isinstance(ret.value, ast.Chain)
    assert isinstance(ret.value.head, ast.BinOp) and ret.value.head.op == "+"


def test_precedence_repeat_binds_tighter_than_arrow() -> None:
    module = parse("network n() { return x -> unit(8) * 2 }")
    ret = module.definitions[0].body[0]
    assert isinstance(ret, ast.Return) and isinstance(ret.value, ast.Chain)
    assert isinstance(ret.value.links[0], ast.BinOp) and ret.value.links[0].op == "*"


def test_spans_are_kept() -> None:
    module = parse("network n() {\n  input x: [1]\n  return x -> relu\n}", "s.cnn")
    ret = module.definitions[0].body[1]
    assert (ret.span.file, ret.span.line, ret.span.col) == ("s.cnn", 3, 3)


SPECS = sorted((ROOT / "specs").glob("*.cnn")) + sorted((ROOT / "examples").rglob("*.cnn"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_parses(path: Path) -> None:
    parse(path.read_text(), str(path))


@pytest.mark.parametrize("label", sorted(SYNTAX_ERRORS))
def test_syntax_error_examples_fail_with_their_label(label: str) -> None:
    from cnndsl.source import CnnError

    for example in SYNTAX_ERRORS[label]:
        with pytest.raises(CnnError) as info:
            parse(example, "e.cnn")
        message = info.value.diagnostics[0].message
        # The label names the mistake, unless a more precise bracket message applies.
        assert label in message or "unclosed" in message or "closes nothing" in message, (
            example,
            message,
        )


def test_parser_is_cached() -> None:
    assert parser() is parser()
