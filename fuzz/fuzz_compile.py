"""Coverage-guided fuzzing of the whole front end with atheris (outside CI).

Every input must end in a compiled network or a CnnError with located
diagnostics; anything else (a traceback, a hang caught by -timeout, runaway
memory caught by -rss_limit_mb) is a finding. Crashing inputs go to
tests/frontend/fuzz_regressions/ so the test suite replays them forever.

    pip install atheris
    python fuzz/fuzz_compile.py fuzz/corpus -max_total_time=3600 -timeout=60 -rss_limit_mb=2048

The timeout is generous because instrumented code runs many times slower: a
whole Inception-v3 compiles in 0.4 s plain and about 10 s instrumented.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# Coverage of cnndsl's own code guides the search; instrumenting lark and networkx
# too would only slow every run down.
with atheris.instrument_imports(include=["cnndsl"]):
    import cnndsl
    from cnndsl.source import CnnError

ROOT = Path(__file__).resolve().parent.parent


def test_one_input(data: bytes) -> None:
    """Compile the input; only CnnError (with located diagnostics) may escape."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        cnndsl.compile(text, max_layers=2000)
    except CnnError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            d.render(exc.sources)


def seed_corpus(folder: Path) -> None:
    """Start from the shipped specs and the language examples."""
    folder.mkdir(parents=True, exist_ok=True)
    for spec in [*ROOT.glob("specs/*.cnn"), *ROOT.glob("examples/**/*.cnn")]:
        (folder / spec.name).write_bytes(spec.read_bytes())


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        seed_corpus(Path(corpus[0]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
