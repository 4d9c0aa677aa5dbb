"""Random mutations of the shipped specs never make the compiler raise anything but CnnError."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from([*TOKENS, " ", "a", "1", ":"]), max_size=40).map(" ".join))
def test_token_soup(text: str) -> None:
    compiles_or_diagnoses(text)


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
def network_spec(draw: st.DrawFn) -> str:
    h = draw(st.integers(1, 40))
    c = draw(st.integers(1, 8))
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


REGRESSIONS = sorted((Path(__file__).resolve().parent / "fuzz_regressions").glob("*.cnn"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_fuzz_regressions(path: Path) -> None:
    compiles_or_diagnoses(path.read_bytes().decode("utf-8", "replace"))
