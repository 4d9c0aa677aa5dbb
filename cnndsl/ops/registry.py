"""The op registry: one class per op, holding everything the op means.

Each op declares its argument schema (positional order, defaults, types),
its shape rule, its weight shapes (parameter counts derive from these), its
multiply-accumulate count, its receptive-field window, and its forward and
backward kernels written once against an array module `xp` (numpy or cupy).
`register` checks a class at import time and files it in `OPS`; every
consumer looks ops up there (`OPS[layer.op].shape(...)`), never by a chain
of `if`s.

Shapes never include the batch axis: a feature map is `(h, w, c)` (NHWC,
as Keras), a vector `(n,)`. Kernels see arrays with the batch axis first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cnndsl.ops.attrs import REQUIRED, AttrType, Choice, near
from cnndsl.ops.errors import AttrError
from cnndsl.ops.window import (
    POINTWISE,
    Window,
)

Shape = tuple[int, ...]
Array = Any  # numpy.ndarray or cupy.ndarray
Weights = dict[str, Array]  # a layer's weight arrays by name
Forward = tuple[Array, Any]  # (output, what backward needs)
Backward = tuple[list[Array | None], dict[str, Array]]  # (input grads, weight grads)


class Activation(Choice):
    """The name of a registered activation (`relu`, `softmax`, ... or `none`)."""

    def __init__(self) -> None:
        super().__init__(options=())

    @property
    def describe(self) -> str:  # type: ignore[override]
        return "an activation: " + ", ".join(["none", *ACTIVATIONS])

    def convert(self, name: str, value: Any) -> str:
        if value is None or value == "none" or value == "identity":
            return "none"
        if not isinstance(value, str) or value not in ACTIVATIONS:
            text = self.fail(name, value).message
            if isinstance(value, str):
                text += near(list(ACTIVATIONS), value)
            raise AttrError(text, name)
        return value


# ---- Bound attributes, weights, kernel context ----


class Attrs(Mapping[str, Any]):
    """An op's resolved arguments: immutable, hashable, readable as `a.kernel`."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_items", dict(items))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Attrs are immutable")

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._items.items())))

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"

    def replace(self, **changes: Any) -> Attrs:
        """A copy with some values changed."""
        return Attrs({**self._items, **changes})


@dataclass(frozen=True)
class WeightSpec:
    """One weight array of a layer: shape, whether training updates it, initialiser."""

    shape: Shape
    trainable: bool = True
    init: str = "glorot_uniform"  # glorot_uniform | zeros | ones

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Context:
    """What a kernel call may need besides its inputs.

    training: batch statistics, dropout on. rng: an xp-compatible random
    generator (numpy.random.Generator or cupy's). needs_input_grad: per
    input, whether backward must compute it (False for the network's
    image input, saving the first layer's input gradient). overrides: backend
    kernels that replace a generic one, keyed by name. cache: the layer's
    own dict for buffers it keeps between calls (None: keep nothing; the
    memory guard turns it off where memory is tight). workers: how kernels
    spread chunked work and keep scratch buffers (None: serially, shared
    scratch; see `cnndsl.runtime.workers`).
    """

    training: bool = False
    rng: Any = None
    needs_input_grad: tuple[bool, ...] = ()
    overrides: Mapping[str, Callable[..., Any]] | None = None
    cache: dict[str, Any] | None = None
    workers: Any = None

    def wants_grad(self, i: int) -> bool:
        """Whether backward must produce the gradient of input i."""
        return self.needs_input_grad[i] if i < len(self.needs_input_grad) else True


# ---- The Op base class and the registry ----


class Op:
    """Base class of every op. Subclasses set the class attributes and override methods.

    name: the spec keyword and registry key. args: positional argument order.
    attrs: name -> (AttrType, default); REQUIRED marks an argument without one.
    arity: (min, max) number of input tensors; max None means any number.
    """

    name: ClassVar[str] = ""
    args: ClassVar[tuple[str, ...]] = ()
    attrs: ClassVar[dict[str, tuple[AttrType, Any]]] = {}
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    key_attrs: ClassVar[tuple[str, ...]] = ()  # shown in summaries and plots
    is_activation: ClassVar[bool] = False

    def bind(self, *positional: Any, **kw: Any) -> Attrs:
        """Fill defaults, convert values, reject unknown or missing arguments."""
        if len(positional) > len(self.args):
            raise AttrError(
                f"{self.name} takes at most {len(self.args)} positional argument"
                f"{'s' if len(self.args) != 1 else ''} ({', '.join(self.args) or 'none'}),"
                f" got {len(positional)}"
            )
        values: dict[str, Any] = {}
        for name, value in zip(self.args, positional, strict=False):
            values[name] = value
        for name, value in kw.items():
            if name not in self.attrs:
                raise AttrError(
                    f"{self.name} has no argument '{name}'"
                    + near(list(self.attrs), name)
                    + f" (it takes: {', '.join(self.attrs) or 'no arguments'})",
                    name,
                )
            if name in values:
                raise AttrError(f"argument '{name}' of {self.name} given twice", name)
            values[name] = value
        out: dict[str, Any] = {}
        for name, (kind, default) in self.attrs.items():
            if name in values:
                out[name] = kind.convert(name, values[name])
            elif default is REQUIRED:
                raise AttrError(f"{self.name} needs argument '{name}' ({kind.describe})", name)
            else:
                out[name] = default
        self.check(out)
        return Attrs(out)

    def check(self, a: dict[str, Any]) -> None:
        """Cross-argument checks after conversion; raise AttrError."""

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        """Output shape (no batch axis) from the input shapes; raise ShapeError."""
        raise NotImplementedError

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        """Weight arrays by name (Keras layouts); parameter counts derive from these."""
        return {}

    def macs(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """Multiply-accumulates per sample."""
        return 0

    def window(self, a: Attrs, *xs: Shape) -> Window:
        """Receptive-field step of this layer."""
        return POINTWISE

    def plan(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> dict[str, Any]:
        """Kernel choices fixed at lowering from the shapes, merged into the step's attrs.

        E.g. conv's input-gradient variant. Attributes set here are not part of
        the language (bind rejects them); forward/backward read them with
        `a.get(name)` and fall back to the same choice when called directly.
        """
        return {}

    def kept_for_training(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """Values per sample the layer keeps in its own buffer while training (beyond saved).

        E.g. a Winograd conv's transformed input tiles, which its forward
        leaves for the kernel gradient in a buffer reused from step to step.
        """
        return 0

    def shared_scratch(
        self, a: Attrs, xs: Sequence[Shape], y: Shape, batch: int, itemsize: int
    ) -> tuple[int, int]:
        """Bytes of scratch the kernels share between lanes: (in every pass, in training only).

        E.g. a conv's Winograd kernel transform, and its kernel-gradient partials.
        """
        return 0, 0

    def fresh_output(self, a: Attrs) -> bool:
        """Whether forward returns a new array that nothing else references.

        Not a view of an input, not kept in the saved value. Lowering lets a
        following activation overwrite such an output in place; anything else
        (the default) could corrupt an input or what backward reads.
        """
        return False

    def forward(
        self, xp: Any, a: Attrs, xs: list[Array], w: dict[str, Array], ctx: Context
    ) -> tuple[Array, Any]:
        """Output batch and whatever backward needs (the 'saved' value)."""
        raise NotImplementedError

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: dict[str, Array], ctx: Context
    ) -> tuple[list[Array | None], dict[str, Array]]:
        """Gradients of the inputs (None where not wanted) and of the trainable weights."""
        raise NotImplementedError

    def describe(self, a: Attrs) -> str:
        """Short label with key arguments, e.g. 'conv 3×3/2, 128'."""
        parts = []
        for k in self.key_attrs:
            v = a[k]
            if isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v):
                v = f"{v[0]}×{v[1]}" if v[0] != v[1] else f"{v[0]}×{v[0]}"
            parts.append(str(v))
        return f"{self.name} {', '.join(parts)}" if parts else self.name


OPS: dict[str, Op] = {}
ACTIVATIONS: dict[str, Op] = {}

_METHODS = ("shape", "forward", "backward")


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: check the op is complete and file it under its name."""
    assert cls.name and cls.name not in OPS, f"op name missing or taken: {cls.name!r}"
    for method in _METHODS:
        assert getattr(cls, method) is not getattr(Op, method), f"{cls.name} lacks {method}"
    for arg in cls.args:
        assert arg in cls.attrs, f"{cls.name}: positional '{arg}' not in attrs"
    op = cls()
    OPS[cls.name] = op
    if cls.is_activation:
        ACTIVATIONS[cls.name] = op
    return cls
