"""What training shows while it runs: a line per epoch and a progress bar, both on stderr.

Both are `Callback`s, used by `cnndsl run` and by `Model.fit(verbose=...)`
(2: the epoch lines; 1: the bar too, on a terminal). They go to stderr so
that stdout holds only results (test metrics, predictions), whatever stdout
is connected to. The bar is rich's, drawn only on a terminal and erased at
each epoch's end, where the epoch line replaces it; its one line is laid
out here so that the count and total stay visible at any width (at 80
columns the metrics give way first, then the bar).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from cnndsl.training.history import Callback

BAR_WIDTH = (10, 40)  # the bar's narrowest and widest, in columns


class EpochLines(Callback):
    """One line per epoch on stderr: loss, metrics, validation, time and throughput."""

    def __init__(self, epochs: int | None = None, stage: str = "", file: IO[str] | None = None):
        self.epochs = epochs  # None: the run's, from on_train_begin
        self.stage = stage  # e.g. "fine-tune ", before "epoch"
        self.file = file  # None: sys.stderr when printing (so capture and redirection work)
        self.samples = 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if self.epochs is None:
            self.epochs = int(logs.get("epochs", 0))
        if "resumed_from" in logs:
            print(f"resuming from {logs['resumed_from']}", file=self.file or sys.stderr, flush=True)

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self.samples = int(logs["samples"])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        seconds = logs.get("seconds", 0.0)
        values = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        rate = self.samples / seconds if seconds > 0 else math.inf
        width = len(str(self.epochs))
        print(
            f"{self.stage}epoch {epoch + 1:>{width}}/{self.epochs}  {values}  ({seconds:.1f} s,"
            f" {rate:,.0f} samples/s)",
            file=self.file or sys.stderr,
            flush=True,
        )


class ProgressBar(Callback):
    """A rich progress bar per epoch on stderr: count/total, bar, ETA, metrics, samples/s."""

    def __init__(self, epochs: int | None = None, stage: str = "", console: Any = None) -> None:
        self.epochs = epochs  # None: the run's, from on_train_begin
        self.stage = stage
        self.console = console  # None: a rich Console on stderr
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if self.epochs is None:
            self.epochs = int(logs.get("epochs", 0))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = self.console or Console(stderr=True)
        self.progress = Progress(
            _line_column(f"{self.stage}epoch {epoch + 1}/{self.epochs}", console),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=None, metrics="", rate="")
        self.start = time.perf_counter()

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        if self.progress is None:
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        shown = "  ".join(
            f"{k} {v:.4f}" for k, v in logs.items() if k not in ("samples", "total", "seconds")
        )
        self.progress.update(
            self.task,
            completed=logs["samples"],
            total=logs["total"],
            metrics=shown,
            rate=f"{logs['samples'] / seconds:,.0f} samples/s",
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self.on_epoch_end(0, logs)


def bar_line(
    label: str,
    completed: int,
    total: int | None,
    seconds_left: float | None,
    metrics: str,
    width: int,
) -> tuple[str, int, int]:
    """The bar's line laid out for `width` columns: (text with a gap for the bar, its start, size).

    The label and count come first and always show; the bar shrinks to
    BAR_WIDTH[0], then the metrics are cut (with an ellipsis), then the bar goes.
    """
    head = f"{label}  {completed}/{total if total is not None else '?'}"
    eta = "ETA " + ("-:--:--" if seconds_left is None else _clock(seconds_left))
    room = width - 1 - len(head) - len(eta) - 3  # NOTE: one column spare: no wrap at the edge
    bar = max(BAR_WIDTH[0], min(BAR_WIDTH[1], room - len(metrics)))
    if room < bar:
        bar = 0
    if len(metrics) > room - bar:
        keep = max(room - bar - 1, 0)
        metrics = metrics[:keep] + "…" if keep else ""
    start = len(head) + 1
    text = f"{head} {' ' * bar} {eta} {metrics}".rstrip()
    return text, start, bar


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _line_column(label: str, console: Any) -> Any:
    """A rich progress column that draws the whole line itself, laid out by bar_line."""
    # NOTE: defined on first use so that importing this module does not import rich.
    from rich.progress import ProgressColumn
    from rich.text import Text

    class LineColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            fields = (task.fields.get("metrics"), task.fields.get("rate"))
            text, start, bar = bar_line(
                label,
                int(task.completed),
                None if task.total is None else int(task.total),
                task.time_remaining,
                "  ".join(s for s in fields if s),
                console.width,
            )
            done = round(bar * min(task.completed / task.total, 1)) if task.total else 0
            return Text.assemble(
                text[:start],
                ("━" * done, "bar.complete"),
                ("━" * (bar - done), "bar.back"),
                text[start + bar :],
                no_wrap=True,
                overflow="crop",
            )

    return LineColumn()


__all__ = ["EpochLines", "ProgressBar", "bar_line"]
