"""Training settings: the `train {}` section as one typed object, and what overrides it.

Input: the checked section that elaboration stores in `graph.meta["train"]`
(names, kinds and ranges are checked there, with spans, by
cnndsl.frontend.values.train_section). Output: `TrainSettings`, one field per
setting with its default. Precedence is the same everywhere: an explicit
argument (`Model.fit`, `Model.compile`, `Model(seed=)`, a `cnndsl run` flag)
> the spec's train section > the default here.

    >>> settings = TrainSettings.from_section({"batch": 16, "lr": 0.5})
    >>> settings.overridden(batch=64, epochs=None).batch
    64

Where each setting takes effect:
  loss, optimizer, lr, metrics    the Model (Model.compile/fit arguments; --loss, --optimizer,
                                  --lr, --metrics)
  loss_weights                    the Model, with several outputs (`loss = [a, b]` gives
                                  one loss per output in return order; Model.compile)
  batch, epochs, validation_split Model.fit (batch_size=, epochs=, validation_split=; flags)
  seed                            Model(seed=) and Network.build(seed=); --seed
  data                            `cnndsl run` only, as the default of --data (fit takes arrays)
Raises ModelError for an explicit value out of range (the spec's are checked
at compile time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from cnndsl.frontend.values import LR_NAMES, TRAIN_SETTINGS
from cnndsl.runtime.executor import ModelError
from cnndsl.source import CnnError
from cnndsl.training.optimizers import Optimizer, get_optimizer

DEFAULT_OPTIMIZER = "adam"
# Settings whose explicit values (arguments, flags) go through the spec's range checks.
NUMBERS = ("batch", "epochs", "lr", "validation_split", "seed")


def _default_optimizer() -> Mapping[str, Any]:
    return MappingProxyType({"name": DEFAULT_OPTIMIZER})


@dataclass(frozen=True)
class TrainSettings:
    """Every `train {}` setting, typed, with the value it has when the spec omits it."""

    # None: chosen from each output's activation (Model._default_loss); a tuple: one per output.
    loss: str | tuple[str, ...] | None = None
    loss_weights: tuple[float, ...] | None = None  # None: 1 for every output
    optimizer: Mapping[str, Any] = field(default_factory=_default_optimizer)
    lr: float | None = None  # None: the optimizer's own (its lr= or its default)
    metrics: tuple[str, ...] | None = None  # None: accuracy with a cross-entropy loss
    batch: int = 32
    epochs: int = 1
    validation_split: float = 0.0  # the last fraction of the samples, before shuffling
    seed: int = 0  # weights, shuffling, dropout
    data: str = "digits"  # what `cnndsl run` trains on

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> TrainSettings:
        """The settings of a checked train section ({} for none): its values, else defaults."""
        unknown = set(section) - {f.name for f in fields(cls)}
        assert not unknown, f"elaboration admits only known train settings, got {unknown}"
        values = dict(section)
        if "optimizer" in values:  # NOTE: read-only, so a frozen settings object stays unchanged
            values["optimizer"] = MappingProxyType(dict(values["optimizer"]))
        for name in ("metrics", "loss_weights"):
            if name in values:
                values[name] = tuple(values[name])
        if isinstance(values.get("loss"), list):
            values["loss"] = tuple(values["loss"])
        return cls(**values)

    def overridden(self, **explicit: Any) -> TrainSettings:
        """These settings with every explicit value that is not None in their place."""
        given = {k: v for k, v in explicit.items() if v is not None}
        for name in NUMBERS:
            if name in given:
                given[name] = checked(name, given[name])
        if "metrics" in given:
            given["metrics"] = tuple(given["metrics"])
        return replace(self, **given)

    def build_optimizer(
        self, given: str | Mapping[str, Any] | Optimizer | None = None, lr: float | None = None
    ) -> Optimizer:
        """The optimizer `given` (else the spec's) at learning rate `lr`.

        Without `lr`, the optimizer keeps the learning rate it states (an
        Optimizer object, `sgd(lr=0.1)`), else takes the spec's `lr`, else its default.
        """
        chosen = self.optimizer if given is None else given
        if lr is not None:
            lr = checked("lr", lr)
        if isinstance(chosen, Optimizer):
            return chosen if lr is None else get_optimizer(chosen, lr=lr)
        config = {"name": chosen} if isinstance(chosen, str) else dict(chosen)
        if lr is None and not any(k in config for k in LR_NAMES):
            lr = self.lr
        return get_optimizer(config, lr=lr)


def checked(name: str, value: Any) -> Any:
    """An explicit value under the spec's rule for setting `name`; ModelError if it breaks it."""
    if isinstance(value, np.generic):  # numpy scalars count as the numbers they hold
        value = value.item()
    try:
        return TRAIN_SETTINGS[name](value, None)
    except CnnError as e:
        raise ModelError(f"{name}: {e.diagnostics[0].message}") from None


__all__ = ["DEFAULT_OPTIMIZER", "TrainSettings", "checked"]
