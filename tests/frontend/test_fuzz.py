"""Fuzzing the compiler: random edits never raise anything but CnnError, and what compiles runs.

Mutated specs and token soups end in diagnostics (token soups in many different
ones, spread over the grammar's contexts); generated networks that compile are
built and run: the output has the inferred shape, the weights add up to the
counted parameters and one training step is finite.
"""

from __future__ import annotations

import collections
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnndsl
import cnndsl.ops
from cnndsl.source import CnnError

ROOT = Path(__file__).resolve().parents[2]
# The seed specs and the design's examples: small enough that 2,000 mutants compile quickly.
SPECS = [
    ROOT / "specs" / "fashion_mnist.cnn",
    ROOT / "specs" / "resnet34.cnn",
    *sorted((ROOT / "examples" / "language").glob("*.cnn")),
]
TOTAL_MUTANTS = 2000
TOKENS = [
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "->",
    ",",
    "=",
    "*",
    "+",
    "-",
    "//",
    ".",
    "if",
    "else",
    "for",
    "in",
    "return",
    "input",
    "0",
    "-1",
    "999999999999",
    "1e400",
    "x",
    "conv",
    "block",
    "network",
    '"',
    "#",
    "\n",
    "relu",
    "true",
    "1.5",
    "same",
    "channels",
]


def mutate(text: str, rng: random.Random) -> str:
    """One random edit: delete, duplicate, swap or insert a token or a span of text."""
    if not text:
        return rng.choice(TOKENS)
    i = rng.randrange(len(text))
    j = min(len(text), i + rng.randint(1, 12))
    kind = rng.randrange(5)
    if kind == 0:
        return text[:i] + text[j:]
    if kind == 1:
        return text[:i] + text[i:j] * 2 + text[j:]
    if kind == 2:
        return text[:i] + rng.choice(TOKENS) + text[i:]
    if kind == 3:
        k = rng.randrange(len(text))
        return text[:i] + text[k : k + (j - i)] + text[j:]
    return text[:i] + rng.choice(TOKENS) + text[j:]


def compiles_or_diagnoses(text: str) -> None:
    try:
        cnndsl.compile(text, max_layers=5000)
    except CnnError as exc:
        assert exc.diagnostics, "CnnError without diagnostics"
        for d in exc.diagnostics:
            d.render(exc.sources)  # rendering must not fail either


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_thousands_of_mutations_never_raise_a_traceback(path: Path) -> None:
    original = path.read_text()
    rng = random.Random(path.name)
    count = TOTAL_MUTANTS // len(SPECS)
    for _ in range(count):
        text = original
        for _ in range(rng.randint(1, 3)):
            text = mutate(text, rng)
        compiles_or_diagnoses(text)


SOUP = [*TOKENS, " ", "a", "1", ":"]
# Where a soup goes: top level, a statement, a block body, a chain, a call's arguments,
# a value, defaults. At top level alone, 86% of soups stopped at the same first token.
CONTEXTS = [
    "{}",
    "network g() {{\n    input x: [4, 4, 1]\n    {}\n}}\n",
    "block b(n) {{\n    {}\n}}\n",
    "network g() {{\n    input x: [4, 4, 1]\n    return x -> {}\n}}\n",
    "network g() {{\n    input x: [4, 4, 1]\n    return x -> conv({})\n}}\n",
    "network g() {{\n    input x: [4, 4, 1]\n    y = {}\n    return x\n}}\n",
    "defaults conv({})\n",
]


def first_diagnostic(text: str) -> str:
    """'ok', or the code and message of the first diagnostic (every one must render)."""
    try:
        cnndsl.compile(text, max_layers=5000)
    except CnnError as exc:
        assert exc.diagnostics, "CnnError without diagnostics"
        for d in exc.diagnostics:
            d.render(exc.sources)
        return f"{exc.diagnostics[0].code}: {exc.diagnostics[0].message}"
    return "ok"


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(CONTEXTS), st.lists(st.sampled_from(SOUP), max_size=40).map(" ".join))
def test_token_soup(context: str, soup: str) -> None:
    compiles_or_diagnoses(context.format(soup))


def test_token_soups_reach_many_different_diagnostics() -> None:
    rng = random.Random(0)
    found: collections.Counter[str] = collections.Counter()
    for _ in range(300):
        soup = " ".join(rng.choice(SOUP) for _ in range(rng.randint(0, 12)))
        found[first_diagnostic(rng.choice(CONTEXTS).format(soup))] += 1
    codes = {message.split(":")[0] for message in found}
    assert found.most_common(1)[0][1] < 300 // 5, found.most_common(3)
    assert len(found) >= 35, found
    # lexing, brackets, statements, values, missing arguments, no network
    assert {"E001", "E003", "E004", "E005", "E006", "E012", "E057"} <= codes, codes


# ---- Generated specs: random networks from the op registry, valid or not ----

OP_NAMES = sorted(op for op in cnndsl.ops.OPS if op != "input")
VALUES = st.one_of(
    st.integers(-3, 40),
    st.sampled_from(
        [
            "same",
            "valid",
            "relu",
            "softmax",
            "true",
            "false",
            "(1, 3)",
            "(2, 2)",
            "0.5",
            "1e-3",
            "x",
            "[1, 2]",
            "10 ** 3",
            "99999999999",
        ]
    ),
)


@st.composite
def layer_call(draw: st.DrawFn) -> str:
    op = draw(st.sampled_from(OP_NAMES))
    spec = cnndsl.ops.OPS[op]
    names = list(spec.attrs) + ["name", "trainable", "bogus"]
    positional = [str(draw(VALUES)) for _ in range(draw(st.integers(0, len(spec.args))))]
    keywords = {
        draw(st.sampled_from(names)): str(draw(VALUES)) for _ in range(draw(st.integers(0, 2)))
    }
    keywords.pop("name", None)
    args = positional + [f"{k}={v}" for k, v in keywords.items()]
    return f"{op}({', '.join(args)})" if args or draw(st.booleans()) else op


@st.composite
def network_spec(draw: st.DrawFn, max_size: int = 40, max_channels: int = 8) -> str:
    h = draw(st.integers(1, max_size))
    c = draw(st.integers(1, max_channels))
    chain = " -> ".join(draw(st.lists(layer_call(), min_size=1, max_size=6)))
    extra = draw(
        st.sampled_from(
            ["", "    y = x + x\n", "    y = concat(x, x)\n", "    y = x * (x -> global_avgpool)\n"]
        )
    )
    ret = "y" if extra else "x"
    return (
        f"network g() {{\n    input x: [{h}, {h}, {c}]\n    x = x -> {chain}\n"
        f"{extra}    return {ret}\n}}\n"
    )


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(network_spec())
def test_generated_networks_compile_or_diagnose(text: str) -> None:
    compiles_or_diagnoses(text)


def labels_for(loss: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Targets the loss takes for outputs of `shape` (batch axis included)."""
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, shape[-1], shape[:-1])
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, shape).astype(np.float64)
    return rng.normal(size=shape)


def has_huge_value(attrs: Any) -> bool:
    """A whole-number attribute of 10³ or more (VALUES' `10 ** 3` and 99999999999)."""
    values = [
        v for value in attrs.values() for v in (value if isinstance(value, tuple) else (value,))
    ]
    return any(isinstance(v, int) and not isinstance(v, bool) and v >= 1000 for v in values)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(network_spec(max_size=10, max_channels=3))
def test_generated_networks_that_compile_run_and_train(text: str) -> None:
    try:
        net = cnndsl.compile(text, max_layers=200)
    except CnnError:
        assume(False)
        return
    # Tiny networks only: the point is agreement between passes and runtime, not speed.
    # Windows and sizes of 10³ and more (a pool's window, lrn's radius, upsample's factor)
    # are fuzzed for diagnostics only here; windows far beyond the input run in the test below.
    assume(net.total_params <= 200_000 and net.macs <= 5_000_000)
    assume(all(math.prod(layer.shape) <= 100_000 for layer in net.layers))
    assume(not any(has_huge_value(layer.attrs) for layer in net.layers))
    model = net.build(seed=0, dtype="float64")
    weights = model.get_weights()
    assert sum(w.size for w in weights) == net.total_params
    assert model.count_params()["total"] == net.total_params
    rng = np.random.default_rng(0)
    x = rng.random((2, *net.input_shape))
    out = model(x)
    assert out.shape == (2, *net.output_shape)
    assert np.all(np.isfinite(out))
    loss, _ = model.train_step(x, labels_for(model.loss.name, out.shape, rng))
    assert math.isfinite(loss)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.parametrize("layer", ["lrn(99999999999)", "avgpool(99999999999, padding=same)"])
def test_a_window_far_beyond_the_input_runs(layer: str) -> None:
    net = cnndsl.compile(f"network g() {{\n    input x: [1, 1, 1]\n    return x -> {layer}\n}}")
    x = np.full((1, 1, 1, 1), 0.5)
    # every window covers the one value: lrn gives x / (1 + 1e-4·x²)^0.75, the pool x
    expected = x / (1 + 1e-4 * x * x) ** 0.75 if layer.startswith("lrn") else x
    np.testing.assert_allclose(net.build(dtype="float64")(x), expected)


REGRESSIONS = sorted((Path(__file__).resolve().parent / "fuzz_regressions").glob("*.cnn"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_fuzz_regressions(path: Path) -> None:
    compiles_or_diagnoses(path.read_bytes().decode("utf-8", "replace"))
