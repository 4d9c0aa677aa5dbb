"""--set values, --network and the errors of choosing a network (E056, E058).

Each value kind `--set` parses (whole numbers, floats, booleans, pairs, lists,
names) is checked by its effect on the compiled network, read back from
`compile --format json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cnndsl.cli import main
from cnndsl.cli.common import parse_value

SPEC = """
network n(size=8, width=2, use_bn=false, rate=0.25, kernel=(3, 3), widths=[2, 4], act=relu) {
    input x: [size, size, 1]
    y = x -> conv(width, kernel, activation=act, name="first")
    if use_bn {
        y = y -> batchnorm(name="bn")
    }
    for w in widths {
        y = y -> conv(w, 1)
    }
    return y -> dropout(rate, name="drop")
}

network other() {
    input x: [4, 4, 1]
    return x -> flatten
}
"""


@pytest.fixture
def spec(tmp_path: Path) -> str:
    path = tmp_path / "two.cnn"
    path.write_text(SPEC)
    return str(path)


def compiled(spec: str, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["compile", spec, "--format", "json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def exit_code(argv: list[str]) -> int:
    """main's status, or the code of the SystemExit that usage and spec errors raise."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def layers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {layer["path"]: layer for layer in doc["layers"]}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", 12),
        ("1_000", 1000),
        ("-3", -3),
        ("0.5", 0.5),
        ("1e-3", 0.001),
        ("true", True),
        ("false", False),
        ("(1, 5)", (1, 5)),
        ("(2,)", (2,)),
        ("[5, 6, 7]", [5, 6, 7]),
        ("[0.5, true, relu]", [0.5, True, "relu"]),
        ("[]", []),
        (" tanh ", "tanh"),
        ("True", "True"),  # the language's booleans are lower case; anything else is a name
    ],
)
def test_set_value_kinds(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)
    if isinstance(value, list | tuple):
        assert [type(v) for v in parsed] == [type(v) for v in value]


def test_defaults_without_set(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    got = layers(compiled(spec, capsys, "--network", "n"))
    assert got["x"]["shape"] == [8, 8, 1]
    assert got["first"]["attrs"]["kernel"] == [3, 3] and got["first"]["shape"] == [6, 6, 2]
    assert got["first"]["attrs"]["activation"] == "relu"
    assert "bn" not in got and got["drop"]["attrs"]["rate"] == 0.25
    assert [p for p in got if p.startswith("conv_")] == ["conv_1", "conv_2"]


def test_set_reaches_every_parameter(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--network", "n", "--set", "size=10", "width=3", "use_bn=true", "rate=0.5"]
    argv += ["--set", "kernel=(1, 5)", "--set", "widths=[5, 6, 7]", "act=tanh"]
    doc = compiled(spec, capsys, *argv)
    got = layers(doc)
    assert got["x"]["shape"] == [10, 10, 1]
    # conv(3, (1, 5)) on 10×10: 10 - 1 + 1 = 10 rows, 10 - 5 + 1 = 6 columns
    assert got["first"]["attrs"]["kernel"] == [1, 5] and got["first"]["shape"] == [10, 6, 3]
    assert got["first"]["attrs"]["activation"] == "tanh"
    assert got["bn"]["op"] == "batchnorm"
    assert [got[f"conv_{i}"]["shape"][-1] for i in (1, 2, 3)] == [5, 6, 7]
    assert got["drop"]["attrs"]["rate"] == 0.5
    # params: conv 1·5·1·3 + 3 = 18, batchnorm 4·3 = 12, 1×1 convs 3·5+5, 5·6+6, 6·7+7
    assert doc["totals"]["params"] == 18 + 12 + 20 + 36 + 49


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 1, "error[E058]: {spec} defines several networks (n, other): choose one with"),
        (["--network", "nn"], 1, "error[E056]: no network 'nn' in {spec}; did you mean 'n'?"),
        (["--network", "zzz"], 1, "(networks: n, other)"),
        (["--network", "n", "--set", "bogus=1"], 1, "error[E011]: network 'n' has no parameter"),
        (["--network", "n", "--set", "size"], 2, "error: --set expects NAME=VALUE, got 'size'"),
        (["--network", "n", "--set", "2x=1"], 2, "error: --set expects NAME=VALUE, got '2x=1'"),
        (["--network", "n", "--set", "size=big"], 1, "error[E023]: input shape must be"),
    ],
)
def test_choosing_a_network_and_bad_settings(
    spec: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert exit_code(["compile", spec, *argv]) == code
    captured = capsys.readouterr()
    assert message.format(spec=spec) in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_network_picks_the_other_one(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = compiled(spec, capsys, "--network", "other")
    assert doc["network"] == "other" and doc["layers"][-1]["shape"] == [16]


def test_run_takes_network_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pair.cnn"
    path.write_text(
        SPEC.replace(
            'return y -> dropout(rate, name="drop")',
            "return y -> flatten -> dense(10, activation=softmax)",
        )
    )
    argv = ["run", str(path), "--network", "n", "--set", "size=8", "widths=[3]", "--epochs", "1"]
    assert main([*argv, "-q", "--batch-size", "256"]) == 0
    err = capsys.readouterr().err
    # conv 3·3·1·2 + 2 = 20, 1×1 conv 2·3 + 3 = 9, dense 6·6·3·10 + 10 = 1090
    assert "n: 1,119 parameters" in err
    assert exit_code(["run", str(path), "--epochs", "1", "-q"]) == 1
    assert "error[E058]" in capsys.readouterr().err
