"""Ctrl-C during training, honoured between two steps rather than in the middle of one."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupts:
    """Defers the first SIGINT to the next step boundary, where a checkpoint is consistent.

    A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread
    signals cannot be caught, so nothing changes there.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Catch SIGINT while the block runs, then restore the previous handler."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)
