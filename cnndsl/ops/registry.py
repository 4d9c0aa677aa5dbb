"""The op registry: one class per op, holding everything the op means.

Each op declares its argument schema (positional order, defaults, types),
its shape rule, its weight shapes (parameter counts derive from these), its
multiply-accumulate count, its receptive-field window, and its forward and
backward kernels written once against an array module `xp` (numpy or cupy).
`register` checks a class at import time and files it in `OPS`; every
consumer looks ops up there (`OPS[layer.op].shape(...)`), never by a chain
of `if`s. What lowering, inference folding, memory planning, warnings and
plots need to know of an op are attributes and methods of `Op` too (its
`family`, whether it `pads_itself` or `hosts_activation`, its `workspace`,
...), set in the op's own file: nothing outside cnndsl/ops compares op names.

Shapes never include the batch axis: a feature map is `(h, w, c)` (NHWC,
as Keras), a vector `(n,)`. Kernels see arrays with the batch axis first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cnndsl.ops.attrs import REQUIRED, AttrType, Choice, Signature
from cnndsl.ops.window import POINTWISE, Geometry, Pads, Window

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
            raise self.fail(name, value, list(ACTIVATIONS))
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
    scratch; see `cnndsl.runtime.workers`). allreduce: under data-parallel
    training, sums an xp array over every rank (batchnorm's per-channel sums,
    for statistics of the global batch; see cnndsl.training.distributed); None
    on one process.
    """

    training: bool = False
    rng: Any = None
    needs_input_grad: tuple[bool, ...] = ()
    overrides: Mapping[str, Callable[..., Any]] | None = None
    cache: dict[str, Any] | None = None
    workers: Any = None
    allreduce: Callable[[Any], Any] | None = None

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

    # ---- What the passes, lowering, the executor and the plots ask of an op ----
    # (the methods below answer the questions that depend on attrs or shapes)

    family: ClassVar[str] = "shape"
    """What kind of op it is: conv, pool, dense, norm, act, merge, shape or input.

    Diagrams colour nodes by it (cnndsl.plot.diagram). A shape error of a
    `merge` (add, multiply, concat) is E031, tensors that cannot be combined
    (cnndsl.frontend.emit); any other op's is E041.
    """

    drawn_kernel: ClassVar[str | None] = None
    """The weight [fh, fw, in, out] that `cnndsl plot --filters` draws as pictures
    (cnndsl.plot.maps); None for ops without a spatial kernel."""

    infix: ClassVar[str | None] = None
    """The spec operator written between two tensors for this op (`a + b` is add,
    `a * b` multiply); None: the op is called by name. The elaborator and the
    spec writer of ONNX import both read it."""

    augments: ClassVar[bool] = False
    """Draws random transformations of its input in training (Keras' Random* layers).
    A spec with such a layer says its own augmentation, so `cnndsl run` leaves
    the image-folder loader's built-in flip-and-crop off."""

    pads_itself: ClassVar[bool] = False
    """The kernels take attrs pad_input=((top, bottom), (left, right)): zeros around
    the input that add to the op's own padding. Lowering (`fuse_zeropad`) folds a
    zeropad read only by such an op into it, so no padded copy is made."""

    in_place: ClassVar[bool] = False
    """An activation whose kernel may overwrite its input (attrs inplace=True) and
    that producers may run inside their kernels (`hosts_activation`). Lowering
    (`fuse_activations`) sets inplace=True where nothing else reads the input."""

    frozen_as_inference: ClassVar[bool] = False
    """A frozen layer of this op runs as at inference even in training: batchnorm
    uses and keeps its moving statistics (Keras' rule for a frozen
    BatchNormalization). Read by the executor."""

    dropped_at_inference: ClassVar[bool] = False
    """The op is the identity at inference (dropout): inference folding
    (cnndsl.passes.fold) removes it and its readers read its input."""

    folds_into_producer: ClassVar[bool] = False
    """At inference the op is a per-channel affine map along the last axis
    (`inference_affine`): inference folding merges it into a producer that names
    a `channel_weight`, when only this layer reads that producer."""

    def signature(self, *extra: str) -> Signature:
        """How a call names this op's arguments; `extra` names the caller handles itself."""
        return Signature(self.name, (*self.attrs, *extra), self.args)

    def bind(self, *positional: Any, **kw: Any) -> Attrs:
        """Fill defaults, convert values, reject unknown or missing arguments."""
        signature = self.signature()
        values = signature.bind(positional, kw)
        out: dict[str, Any] = {}
        for name, (kind, default) in self.attrs.items():
            if name in values:
                out[name] = kind.convert(name, values[name])
            elif default is REQUIRED:
                raise signature.missing(name, kind.describe)
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

    def plan(
        self,
        a: Attrs,
        xs: Sequence[Shape],
        y: Shape,
        algorithms: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """Kernel choices fixed at lowering from the shapes, merged into the step's attrs.

        E.g. conv's input-gradient variant. Attributes set here are not part of
        the language (bind rejects them); forward/backward read them with
        `a.get(name)` and fall back to the same choice when called directly.
        algorithms: the kernels the backend has (`Capabilities.conv_algorithms`;
        None: all of them).
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

    def geometry(self, a: Attrs, *xs: Shape) -> Geometry | None:
        """The window arithmetic (padding, output size) of a sliding-window op; None otherwise.

        Read by `window` (the receptive-field step), the W001 unread-pixels
        warning (cnndsl.passes.shapes) and the ops' own shape rules and kernels.
        """
        return None

    def window(self, a: Attrs, *xs: Shape) -> Window:
        """Receptive-field step of this layer: its geometry's extent and stride, else pointwise."""
        geo = self.geometry(a, *xs)
        return POINTWISE if geo is None else Window(geo.effective, geo.stride)

    def zero_border(self, a: Attrs) -> Pads | None:
        """The zeros this op puts around its input where that is all it does (zeropad).

        None for any other op. Lowering folds such a layer into a reader that
        `pads_itself`; the W001 warning knows that rows it adds are zeros.
        """
        return None

    def hosts_activation(self, a: Attrs, activation: str) -> bool:
        """Whether this op's kernel can apply `activation` to its output (as attrs activation=).

        Lowering (`fuse_activations`) moves an `in_place` activation that is the
        only reader of this layer into it.
        """
        return False

    def final_activation(self, a: Attrs) -> str | None:
        """The activation this layer applies last, or None: an activation's own name, else
        the `activation=` argument (conv, dense; or one that lowering fused in).

        Read by lowering (`output_activation`, `strip_output_activation`): the
        default loss follows the network's final activation, and a loss that
        absorbs it (softmax + cross-entropy) runs on the logits before it.
        """
        if self.is_activation:
            return self.name
        act = a.get("activation", "none")
        return None if act in (None, "none") else str(act)

    def acts_along_last_axis(self, a: Attrs, y: Shape) -> bool:
        """Whether the final activation works elementwise or along the last axis.

        A loss absorbs an activation only then, as it computes it along the last
        axis (softmax(axis=0) it does not). Read by the executor.
        """
        return True

    def inference_affine(self, a: Attrs, w: Mapping[str, Any]) -> tuple[Any, Any]:
        """(scale, shift): the op at inference as y = scale·x + shift per channel.

        Only for ops that set `folds_into_producer`; w holds host arrays, and the
        result is float64. Read by inference folding (cnndsl.passes.fold).
        """
        raise NotImplementedError(f"{self.name} is not an affine map at inference")

    def channel_weight(self, a: Attrs) -> tuple[str, int] | None:
        """(weight, axes): the weight whose last `axes` axes index this op's output channels.

        Scaling it there by s[k] (and the bias) scales output channel k, so a
        following `folds_into_producer` layer folds in at inference. None where
        that is not so (an activation follows, or no weight carries the
        channels). The op must take `bias=`: folding turns it on.
        """
        return None

    def workspace(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> tuple[int, bool]:
        """(values per sample, all samples at once): kernel scratch besides the output.

        E.g. a conv's im2col columns. Kernels that walk the batch in chunks
        (False) reuse per-lane buffers, which the memory estimate caps; True:
        every sample's scratch is held at once. Read by cnndsl.passes.memory.
        """
        return 0, False

    def shape_note(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> str:
        """What the shapes add to the label, e.g. concat's channel sum ' 64+32=96'; '' if nothing.

        Read by the summary's op column and the diagram's node labels.
        """
        return ""

    def input_preparation(self, a: Attrs) -> dict[str, str]:
        """What this layer declares about preparing images for the network ({}: nothing).

        `preprocess` declares its mode and how image readers fit a picture of
        another size to the input (`image_fit`: crop or stretch); `cnndsl run
        --predict` and image folders read it, and ONNX export writes it as metadata.
        """
        return {}

    def fresh_output(self, a: Attrs) -> bool:
        """Whether forward returns a new array that nothing else references.

        Not a view of an input, not kept in the saved value. Lowering lets a
        following activation overwrite such an output in place; anything else
        (the default) could corrupt an input or what backward reads.
        """
        return False

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Emit this layer as standard ONNX nodes through builder `b`; the output tensor's name.

        b is a cnndsl.formats.onnx_export.OnnxBuilder: it names nodes and
        initializers by the layer's path, holds the layer's weights (`b.weight`)
        and keeps feature maps NCHW (`b.axis` maps an axis of ours to ONNX's).
        """
        raise b.unsupported(self.name)

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
