"""Compile-time limits: numbers, list and string sizes, the work budget, source sizes, messages.

Each case is a spec a careless user or an attacker could write that once gave
a traceback, a hang or gigabytes of memory; each must end in one diagnostic.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import cnndsl
from cnndsl.compiler import MAX_BATCH, compile_block
from cnndsl.frontend.imports import MAX_SOURCE_BYTES, MAX_TOTAL_SOURCE_BYTES
from cnndsl.frontend.values import MAX_STEPS, MAX_STRING
from cnndsl.ops.attrs import SHOW_CHARS, show
from cnndsl.source import CnnError


def net(body: str) -> str:
    return (
        "network n(c = 2) {\n  input image: [8, 8, 1]\n"
        + body
        + "\n  return image -> flatten() -> dense(c)\n}\n"
    )


def diagnosis(source: str) -> tuple[str, str]:
    with pytest.raises(CnnError) as info:
        cnndsl.compile(source)
    d = info.value.diagnostics[0]
    d.render(info.value.sources)  # rendering must not fail either
    return d.code, d.message


@pytest.mark.parametrize(
    "expr", ["int(1e999)", "round(1e999)", "int(-1e999)", "round(-1e999)", "int(1e300)"]
)
def test_infinite_or_huge_floats_have_no_whole_number(expr: str) -> None:
    code, message = diagnosis(net(f"  x = {expr}"))
    assert code == "E017" and ("whole-number" in message or "2^62" in message)


def test_whole_numbers_still_convert() -> None:
    spec = net('  assert int(2.7) == 2 and round(2.5) == 2 and round(3.5) == 4, "rounding"')
    cnndsl.compile(spec)  # no error: Python's rounding, as documented


def test_a_range_past_a_machine_word_is_refused() -> None:
    code, message = diagnosis(net("  x = range(" + "9" * 40 + ")"))
    assert code == "E017" and "limit" in message


def test_an_int_too_large_for_a_float_is_refused() -> None:
    code, _ = diagnosis(net("  x = 1" + "0" * 400 + " / 3"))
    assert code == "E035"


def test_a_list_doubled_in_a_loop_stops_at_the_size_limit() -> None:
    code, message = diagnosis(net("  a = [0, 1]\n  for i in range(40) {\n    a = a + a\n  }"))
    assert code == "E090" and "131,072" in message


def test_a_string_doubled_in_a_loop_stops_at_the_size_limit() -> None:
    code, message = diagnosis(net('  s = "ab"\n  for i in range(40) {\n    s = s + s\n  }'))
    assert code == "E090" and f"{MAX_STRING:,}" in message


def test_a_list_holding_itself_many_times_counts_every_item() -> None:
    start = time.perf_counter()
    code, message = diagnosis(net("  a = [0, 1]\n  for i in range(60) {\n    a = [a, a]\n  }"))
    assert code == "E090" and "nested lists counted in full" in message
    assert time.perf_counter() - start < 10


def test_lists_within_the_limit_still_join() -> None:
    spec = net('  a = [1] * 50000 + [2] * 50000\n  assert len(a) == 100000, "joined"')
    cnndsl.compile(spec)


def test_nested_loops_run_out_of_the_work_budget_at_their_span() -> None:
    spec = net(
        "  s = 0\n  for i in range(100000) {\n    for j in range(100000) {\n"
        "      s = s + 1\n    }\n  }"
    )
    start = time.perf_counter()
    with pytest.raises(CnnError) as info:
        cnndsl.compile(spec)
    d = info.value.diagnostics[0]
    assert d.code == "E093" and f"{MAX_STEPS:,}" in d.message
    assert d.span is not None and d.span.line == 6  # inside the inner loop
    assert time.perf_counter() - start < 60


def test_the_shipped_specs_use_a_small_part_of_the_budget() -> None:
    from cnndsl.frontend.elaborate import Elaborator
    from cnndsl.frontend.imports import Loader

    loader = Loader()
    scope = loader.load_file(cnndsl.compiler.resource_path("specs") / "inception_v3.cnn")
    definition = cnndsl.compiler.pick_network(scope, None)
    elaborator = Elaborator(loader)
    elaborator.network(scope, definition, {})
    assert 0 < elaborator.steps < MAX_STEPS // 1000


def test_messages_show_a_bounded_summary_of_a_huge_value() -> None:
    # built in Python: the spec language refuses such a value before it could show it
    value: list = [0, 1]
    for _ in range(60):
        value = [value, value]
    start = time.perf_counter()
    text = show(value)
    assert time.perf_counter() - start < 1
    assert len(text) <= SHOW_CHARS + 40 and "[...]" in text
    assert show(list(range(100_000))).endswith("... (100,000 items)]")
    assert show([1, [2, "same"], (3,)]) == "[1, [2, same], (3)]"
    assert "characters" in show("x" * 10_000)
    assert "bits" in show(10**5000)  # Python's repr refuses ints of more than 4300 digits


def test_an_assertion_message_is_summarised() -> None:
    code, message = diagnosis(net("  a = [1] * 90000\n  assert false, a"))
    assert code == "E040" and "90,000 items" in message and len(message) < 400


def test_a_deep_list_in_a_block_is_e092_with_compile_block(tmp_path) -> None:
    path = tmp_path / "deep.cnn"
    path.write_text(
        "block b(c = 2) {\n  x = "
        + "[" * 400
        + "1"
        + "]" * 400
        + "\n  return input -> dense(c)\n}\n"
    )
    with pytest.raises(CnnError) as info:
        compile_block(path, "b", (4,))
    assert info.value.diagnostics[0].code == "E092"


def test_a_spec_over_the_source_limit_is_refused(tmp_path) -> None:
    path = tmp_path / "big.cnn"
    path.write_text("#" * (MAX_SOURCE_BYTES + 1))
    code, message = diagnosis(path)
    assert code == "E065" and f"{MAX_SOURCE_BYTES:,}" in message
    code, _ = diagnosis("#" * (MAX_SOURCE_BYTES + 1) + "\n")
    assert code == "E065"


def test_an_import_over_the_source_limit_is_refused_at_the_import(tmp_path) -> None:
    (tmp_path / "big.cnn").write_text("#" * (MAX_SOURCE_BYTES + 1))
    main = tmp_path / "main.cnn"
    main.write_text('import "big.cnn"\n' + net(""))
    with pytest.raises(CnnError) as info:
        cnndsl.compile(main)
    d = info.value.diagnostics[0]
    assert d.code == "E065" and d.span is not None and d.span.line == 1


def test_imports_together_over_the_total_limit_are_refused(tmp_path) -> None:
    count = MAX_TOTAL_SOURCE_BYTES // MAX_SOURCE_BYTES + 1
    for i in range(count):
        (tmp_path / f"part{i}.cnn").write_text("#" * (MAX_SOURCE_BYTES - 10) + "\n")
    main = tmp_path / "main.cnn"
    main.write_text("".join(f'import "part{i}.cnn"\n' for i in range(count)) + net(""))
    with pytest.raises(CnnError) as info:
        cnndsl.compile(main)
    d = info.value.diagnostics[0]
    assert d.code == "E065" and f"{MAX_TOTAL_SOURCE_BYTES:,}" in d.message


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cnndsl", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("batch", ["10000000000", "1" + "0" * 23, "1e23", "0"])
def test_compile_batch_is_checked_before_any_work(batch: str) -> None:
    result = cli("compile", "zoo.lenet5", "--batch", batch)
    assert result.returncode == 2 and "--batch" in result.stderr
    assert "Traceback" not in result.stderr


def test_compile_batch_at_the_limit_works() -> None:
    net_ = cnndsl.compile("zoo.lenet5")
    assert net_.memory(MAX_BATCH).training_peak > net_.memory(1).training_peak
    with pytest.raises(ValueError, match="batch"):
        net_.memory(MAX_BATCH + 1)


@pytest.mark.parametrize("expr", ["int(1e999)", "round(1e999)", "int(-1e999)"])
def test_cli_reports_overflow_as_a_diagnostic(tmp_path, expr: str) -> None:
    path = tmp_path / "s.cnn"
    path.write_text(net(f"  x = {expr}"))
    result = cli("compile", str(path))
    assert result.returncode == 1 and "E017" in result.stderr
    assert "Traceback" not in result.stderr
