"""What `fit` reports: the per-epoch History and Keras-style callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnndsl.training.model import Model


class History:
    """What fit returns: `history[name]` is one value per epoch, as in Keras."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record one epoch's logs."""
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: params, epochs and the per-epoch lists."""
        return {"params": self.params, "epoch": self.epoch, "history": self.history}

    def __repr__(self) -> str:
        return f"History({self.history})"


class Callback:
    """Keras-style hooks; override the ones you need. `logs` hold running means."""

    model: Model

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Before the first epoch; logs hold the run's settings (epochs, batch_size, ...)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Before each epoch (counted from 0)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """After each batch: running loss and metrics, samples, total, seconds."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """After each epoch: the epoch's loss, metrics, val_* and seconds."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """After the last epoch; logs are History.history."""
