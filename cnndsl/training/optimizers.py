"""Optimizers with Keras' update rules, applied in place to device arrays.

`step(params, grads)` updates every array in `params` that has a gradient in
`grads` (both keyed 'layer/path:weight'); frozen weights simply get no
gradient. State (iteration count, slots such as momentum) is a plain dict
from `state_dict()`, so a training run can be checkpointed and resumed.

Keras formulas (legacy `decay`: lr_t = lr / (1 + decay · iterations)):
  SGD:      v = momentum·v - lr_t·g;  w += v   (nesterov: w += momentum·v - lr_t·g)
  Adam:     m = b1·m + (1-b1)·g;  v = b2·v + (1-b2)·g²;
            w -= lr_t·sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + epsilon),  t = iterations + 1
  RMSprop:  a = rho·a + (1-rho)·g²;  w -= lr_t · g / (sqrt(a) + epsilon)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from cnndsl.runtime.workers import SERIAL, Workers

Array = Any

UPDATE_BLOCK = 1 << 16  # values updated at once: the update's temporaries stay in a core's L2

# A backend's one-launch update: (fused_update's name and scalars, g, w, slots by name),
# updating w and the slots in place (cnndsl.runtime.backends.cupy_backend).
FusedUpdate = Callable[[str, tuple[float, ...], Array, Array, dict[str, Array]], None]


class OptimizerError(ValueError):
    """An unknown optimizer or a bad hyperparameter."""


class Optimizer:
    """Base class: hyperparameters in `config`, per-weight slots, an iteration count."""

    name = "optimizer"
    slots: tuple[str, ...] = ()

    def __init__(self, lr: float, decay: float = 0.0) -> None:
        if not lr > 0:
            raise OptimizerError(f"{self.name}: learning rate must be > 0, got {lr}")
        if decay < 0:
            raise OptimizerError(f"{self.name}: decay must be >= 0, got {decay}")
        self.lr = float(lr)
        self.decay = float(decay)
        self.iterations = 0
        self.state: dict[str, dict[str, Array]] = {slot: {} for slot in self.slots}

    @property
    def config(self) -> dict[str, Any]:
        """Hyperparameters, as the spec's train section would write them."""
        return {"name": self.name, "lr": self.lr, "decay": self.decay}

    def current_lr(self) -> float:
        """Learning rate of the next step (Keras' time-based `decay`)."""
        return self.lr / (1.0 + self.decay * self.iterations)

    def step(
        self,
        xp: Any,
        params: Mapping[str, Array],
        grads: Mapping[str, Array],
        workers: Workers = SERIAL,
        fused: FusedUpdate | None = None,
    ) -> None:
        """Update params in place from grads, then count the iteration.

        With several lanes (the NumPy backend's threads) the arrays are
        updated in blocks of UPDATE_BLOCK values spread over them: each
        value's update is elementwise, so the bits are those of whole-array
        updates, and a block's temporaries stay small where a whole-array
        temporary of VGG-16's first dense kernel is 400 MB. One lane (CuPy)
        updates whole arrays: one kernel launch per operation and weight,
        or, given the backend's `fused` update, one launch per weight.
        """
        lr = self.current_lr()
        if fused is not None:
            name, scalars = self.fused_update(lr)
            for key, g in grads.items():
                w = params[key]
                fused(name, scalars, g, w, {s: self._slot(xp, s, key, w) for s in self.slots})
            self.iterations += 1
            return
        size = UPDATE_BLOCK if workers.lanes > 1 else None
        blocks: list[tuple[Array, Array, dict[str, Array]]] = []
        for key, g in grads.items():
            w = params[key]
            state = {slot: self._slot(xp, slot, key, w) for slot in self.slots}
            if not all(a.flags.c_contiguous for a in (w, g, *state.values())):
                blocks.append((w, g, state))  # NOTE: a flat view would be a copy: update it whole
                continue
            flat = [a.reshape(-1) for a in (w, g, *state.values())]
            step = size or max(w.size, 1)
            for lo in range(0, w.size, step):
                part = [a[lo : lo + step] for a in flat]
                blocks.append((part[0], part[1], dict(zip(state, part[2:], strict=True))))
        workers.each(blocks, lambda lane, b: self.update(xp, b[0], b[1], b[2], lr))
        self.iterations += 1

    def update(self, xp: Any, w: Array, g: Array, state: Mapping[str, Array], lr: float) -> None:
        """Update (a block of) one weight array in place; state: its slots' matching blocks."""
        raise NotImplementedError

    def fused_update(self, lr: float) -> tuple[str, tuple[float, ...]]:
        """(name, scalars) of this step's update as one fused kernel (`update` is its reference)."""
        raise NotImplementedError

    def _slot(self, xp: Any, slot: str, key: str, w: Array) -> Array:
        table = self.state[slot]
        if key not in table:
            table[key] = xp.zeros_like(w)
        return table[key]

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        """Config, iteration count and slot arrays ('slot/key' -> array)."""
        arrays = {f"{slot}/{k}": v for slot, table in self.state.items() for k, v in table.items()}
        return {"config": self.config, "iterations": self.iterations, "slots": arrays}

    def load_state_dict(self, state: Mapping[str, Any], xp: Any = None) -> None:
        """Restore what `state_dict` returned; arrays are copied (onto xp's device if given)."""
        self.iterations = int(state["iterations"])
        self.state = {slot: {} for slot in self.slots}
        for name, value in state["slots"].items():
            slot, key = name.split("/", 1)
            if slot in self.state:
                self.state[slot][key] = (
                    xp.array(value, copy=True) if xp is not None else value.copy()
                )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")
        return f"{self.name}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum; Keras defaults."""

    name = "sgd"
    slots = ("velocity",)

    def __init__(
        self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, decay: float = 0.0
    ) -> None:
        super().__init__(lr, decay)
        if not 0 <= momentum < 1:
            raise OptimizerError(f"sgd: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, xp: Any, w: Array, g: Array, state: Mapping[str, Array], lr: float) -> None:
        if self.momentum == 0:
            w -= lr * g
            return
        v = state["velocity"]
        v *= self.momentum
        v -= lr * g
        if self.nesterov:
            w += self.momentum * v - lr * g
        else:
            w += v

    def fused_update(self, lr: float) -> tuple[str, tuple[float, ...]]:
        if self.momentum == 0:
            return "sgd", (lr,)
        return ("sgd_nesterov" if self.nesterov else "sgd_momentum"), (lr, self.momentum)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with Keras defaults and bias correction folded into lr_t."""

    name = "adam"
    slots = ("m", "v")

    def __init__(
        self,
        lr: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        decay: float = 0.0,
    ) -> None:
        super().__init__(lr, decay)
        for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= beta < 1:
                raise OptimizerError(f"adam: {name} must be in [0, 1), got {beta}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }

    def update(self, xp: Any, w: Array, g: Array, state: Mapping[str, Array], lr: float) -> None:
        m, v = state["m"], state["v"]
        alpha = self._alpha(lr)
        m *= self.beta_1
        m += (1 - self.beta_1) * g
        v *= self.beta_2
        v += (1 - self.beta_2) * (g * g)
        w -= alpha * m / (xp.sqrt(v) + self.epsilon)

    def _alpha(self, lr: float) -> float:
        """The step size with the bias correction of step t folded in."""
        t = self.iterations + 1  # counted after the step's updates
        return lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    def fused_update(self, lr: float) -> tuple[str, tuple[float, ...]]:
        b1, b2 = self.beta_1, self.beta_2
        return "adam", (self._alpha(lr), b1, 1 - b1, b2, 1 - b2, self.epsilon)


class RMSprop(Optimizer):
    """RMSprop with Keras defaults (lr 0.001, rho 0.9, epsilon 1e-7, no momentum)."""

    name = "rmsprop"
    slots = ("rms",)

    def __init__(
        self, lr: float = 0.001, rho: float = 0.9, epsilon: float = 1e-7, decay: float = 0.0
    ) -> None:
        super().__init__(lr, decay)
        if not 0 <= rho < 1:
            raise OptimizerError(f"rmsprop: rho must be in [0, 1), got {rho}")
        self.rho, self.epsilon = float(rho), float(epsilon)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "rho": self.rho, "epsilon": self.epsilon}

    def update(self, xp: Any, w: Array, g: Array, state: Mapping[str, Array], lr: float) -> None:
        a = state["rms"]
        a *= self.rho
        a += (1 - self.rho) * (g * g)
        w -= lr * g / (xp.sqrt(a) + self.epsilon)

    def fused_update(self, lr: float) -> tuple[str, tuple[float, ...]]:
        return "rmsprop", (lr, self.rho, 1 - self.rho, self.epsilon)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}
_ALIASES = {"learning_rate": "lr"}


def get_optimizer(spec: str | Mapping[str, Any] | Optimizer, **overrides: Any) -> Optimizer:
    """An optimizer from a name, a train-section dict {'name': 'sgd', 'lr': ...} or itself.

    `overrides` (e.g. lr from the command line) replace the spec's values.
    """
    if isinstance(spec, Optimizer):
        if not overrides:
            return spec
        spec = spec.config
    if isinstance(spec, str):
        spec = {"name": spec}
    settings = {_ALIASES.get(k, k): v for k, v in dict(spec).items()}
    settings.update({_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None})
    name = str(settings.pop("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise OptimizerError(f"unknown optimizer '{name}'; known: {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[name](**settings)
    except TypeError:
        import inspect

        known = [p for p in inspect.signature(OPTIMIZERS[name]).parameters]
        bad = sorted(set(settings) - set(known))
        raise OptimizerError(
            f"{name} has no setting {', '.join(map(repr, bad))} (it takes: {', '.join(known)})"
        ) from None


__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "OptimizerError", "RMSprop", "get_optimizer"]
