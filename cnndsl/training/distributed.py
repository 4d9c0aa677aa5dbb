"""Data-parallel training over MPI (mpi4py): the same run as one process, on several.

    mpiexec -n 4 cnndsl run specs/digits.cnn        # or srun -n 4 ..., or model.fit(...)

Input: the communicator a launcher (mpiexec, srun) started this process in.
Output: a `Ranks`, which fit and the model use to split each global batch into
shards, sum gradients (`GradientBuckets`: contiguous buckets, each allreduced
as soon as backward has filled it), synchronise batchnorm's statistics and
reduce metrics; `first_rank_first` lets rank 0 download a data set first.
One process (no launcher, or distributed=False) never imports mpi4py.

What keeps N ranks equal to one process (docs/distributed.md): every rank
starts from rank 0's weights, optimizer state, generators and training state;
every rank draws the same shuffled order and takes a contiguous shard of every
global batch; each rank's loss gradient is weighted by its shard's share of the
global batch, so the summed gradients are the global batch's; batchnorm sums
its per-channel statistics over ranks (`Context.allreduce`); random draws
whose first axis is the batch (dropout masks) are drawn for the whole global
batch on every rank and sliced (`ShardedGenerator`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import numpy as np

from cnndsl.runtime.executor import Executor, ModelError, Observer
from cnndsl.runtime.lower import Plan, Step
from cnndsl.training.device_allreduce import BucketAllreduce, HostAllreduce, choose_allreduce
from cnndsl.training.launcher import launched_rank, launched_ranks

if TYPE_CHECKING:
    from cnndsl.training.checkpoint import TrainState
    from cnndsl.training.model import Model

INSTALL = "pip install 'cnndsl[mpi]'"
T = TypeVar("T")
# Gradient bucket size in MB (10**6 bytes), as PyTorch DDP's bucket_cap_mb (25 by default).
BUCKET_VARIABLE = "CNNDSL_BUCKET_MB"
DEFAULT_BUCKET_MB = 25.0


def bucket_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The gradient bucket size: $CNNDSL_BUCKET_MB megabytes, else 25; a clear error if bad."""
    text = (os.environ if environ is None else environ).get(BUCKET_VARIABLE, "")
    try:
        megabytes = float(text) if text.strip() else DEFAULT_BUCKET_MB
    except ValueError:
        megabytes = -1.0
    if not 0 < megabytes < 1e6:
        raise ModelError(
            f"{BUCKET_VARIABLE}={text!r}: expected the gradient bucket size in MB,"
            f" a number above 0 (default {DEFAULT_BUCKET_MB:g})"
        )
    return max(1, int(megabytes * 1e6))


def quiet_unless_first() -> bool:
    """On a rank other than 0, send this process's stdout and stderr to nothing; whether rank 0.

    Errors that end the job still reach the terminal (`Ranks.abort` writes to
    the process's own stderr).
    """
    if launched_rank() == 0:
        return True
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (for the process's life)
    return False


class Ranks:
    """This process's place in a data-parallel job: rank, rank count and the collectives."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.mpi = MPI
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        # NOTE: the gradient buckets' non-blocking allreduces get a communicator of their
        # own, so they never interleave with batchnorm's blocking ones during backward.
        self.gradient_comm = comm.Dup()
        self.bucket_bytes = bucket_bytes()
        self.mpi_seconds = 0.0  # time spent inside MPI calls (benchmarks/bench_mpi.py)
        # How the gradient buckets are summed (device_allreduce), chosen at the first step.
        self.gradient_allreduce: BucketAllreduce | None = None

    @property
    def first(self) -> bool:
        """Whether this is rank 0, the one that prints and writes files."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items; the first n % size ranks get one more."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return slice(lo, lo + base + (self.rank < extra))

    def allreduce(self, xp: Any, values: Any) -> Any:
        """The sum over ranks of `values` (an xp array), as a new xp array of the same dtype."""
        host = np.ascontiguousarray(xp.asnumpy(values) if hasattr(xp, "asnumpy") else values)
        host = host.copy() if host is values else host
        start = time.perf_counter()
        self.comm.Allreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)
        self.mpi_seconds += time.perf_counter() - start
        return xp.asarray(host)

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """The sum over ranks of each of a few numbers (float64)."""
        return [float(v) for v in self.allreduce(np, np.asarray(values, np.float64))]

    def buckets(self, model: Executor, plan: Plan, extra: Sequence[float]) -> GradientBuckets:
        """An observer of `plan`'s backward that sums its gradients over ranks, bucket by bucket.

        `extra` (the step's weighted losses) is summed along; pass the observer
        to backward, then `finish(grads)` gives extra's sums. The buckets live
        where `choose_allreduce` says (chosen once: NCCL's communicator is a
        collective to make).
        """
        if self.gradient_allreduce is None:
            self.gradient_allreduce = choose_allreduce(self, model.backend)
        return GradientBuckets(self, model, plan, extra, self.gradient_allreduce)

    def share_start(self, model: Model, state: TrainState) -> TrainState:
        """Give every rank rank 0's weights, optimizer state, generators and training state."""
        from cnndsl.training.guards import rng_state, set_rng_state

        for value in model.params.values():
            host = np.ascontiguousarray(model.backend.to_host(value))
            self.comm.Bcast(host, root=0)
            value[...] = model.xp.asarray(host)
        optimizer = self.comm.bcast(_host_state(model) if self.first else None, root=0)
        model.optimizer.load_state_dict(optimizer, model.xp)
        generators = (rng_state(model.rng), rng_state(model.backend.rng), model.moving_updates)
        host_rng, device_rng, updates = self.comm.bcast(generators, root=0)
        set_rng_state(model.rng, host_rng)
        if device_rng is not None:
            set_rng_state(model.backend.rng, device_rng)
        model.moving_updates = dict(updates)
        shared: TrainState = self.comm.bcast(state, root=0)
        return shared

    def check_batches(self, samples: int, batch_size: int) -> None:
        """Refuse a run where some global batch has fewer samples than there are ranks."""
        smallest = samples % batch_size or batch_size
        smallest = min(smallest, batch_size, samples)
        if smallest < self.size:
            raise ModelError(
                f"{self.size} ranks need at least {self.size} samples in every batch, but"
                f" {samples} samples in batches of {batch_size} leave a batch of {smallest};"
                " change --batch-size or the rank count"
            )

    def abort(self, error: BaseException) -> NoReturn:
        """Print the error, naming this rank, and end every rank of the job (no hang)."""
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        stream = sys.__stderr__ or sys.stderr  # NOTE: ranks but 0 may have silenced sys.stderr
        print(f"cnndsl: rank {self.rank} of {self.size} failed: {detail}", file=stream)
        stream.flush()
        self.comm.Abort(1)
        raise SystemExit(1)  # NOTE: Abort does not return; for type checkers


class GradientBuckets(Observer):
    """A step's weight gradients summed over ranks in contiguous buckets, as backward makes them.

    Backward runs the layers in reverse; the updatable weights, in that order,
    are cut into buckets of about `Ranks.bucket_bytes`, which live where
    `allreduce` sums them (device_allreduce: host buffers and MPI, or device
    buffers and NCCL or CUDA-aware MPI). As `gradients` sees a bucket's last
    gradient it starts the bucket's in-place sum, so the sums travel while
    backward goes on with earlier layers; `finish` waits for them all and
    points the gradients at the summed buffers. Each element is summed over
    ranks as one allreduce of everything would sum it, so bucketing never
    changes a result.
    """

    def __init__(
        self,
        ranks: Ranks,
        model: Executor,
        plan: Plan,
        extra: Sequence[float],
        allreduce: BucketAllreduce | None = None,
    ):
        self.ranks = ranks
        self.allreduce = allreduce or HostAllreduce(ranks, model.backend)
        params = model.params
        keys = [k for step in reversed(plan.steps) for k in step.weight_keys if k in params]
        keys = [k for k in keys if k in model._updatable]
        dtype = params[keys[0]].dtype if keys else np.dtype(np.float64)
        # NOTE: on the host the losses ride at the first bucket's start; device buckets
        # leave them on the host, summed at the end by one small MPI allreduce.
        self.extra = np.asarray(extra, dtype)
        riding = len(extra) if isinstance(self.allreduce, HostAllreduce) else 0
        self.where: dict[str, tuple[int, int]] = {}  # key -> (bucket, offset)
        sizes: list[int] = [riding]
        for key in keys:
            if sizes[-1] * dtype.itemsize >= ranks.bucket_bytes:
                sizes.append(0)
            self.where[key] = (len(sizes) - 1, sizes[-1])
            sizes[-1] += int(params[key].size)
        self.buffers = [self.allreduce.buffer(n, dtype) for n in sizes]
        if riding:
            self.buffers[0][:riding] = self.extra
        self.riding = riding
        self.missing = [0] * len(sizes)
        for bucket, _ in self.where.values():
            self.missing[bucket] += 1
        self.handles: list[Any] = [None] * len(sizes)

    def gradients(
        self, step: Step, input_grads: Sequence[Any], weight_grads: Mapping[str, Any]
    ) -> bool:
        """Copy this layer's weight gradients into their buckets; start each bucket filled."""
        for name, grad in weight_grads.items():
            found = self.where.get(f"{step.path}:{name}")
            if found is None:
                continue
            bucket, at = found
            self.allreduce.put(self.buffers[bucket], at, grad)
            self.missing[bucket] -= 1
            if self.missing[bucket] == 0:
                self._start(bucket)
        return False

    def _start(self, bucket: int) -> None:
        started = [h for h in self.handles if h is not None]
        self.handles[bucket] = self.allreduce.start(self.buffers[bucket], started)

    def finish(self, grads: dict[str, Any]) -> list[float]:
        """Wait for every bucket; grads (backward's) become the sums over ranks; extra's sums."""
        for bucket, handle in enumerate(self.handles):
            if handle is None:  # NOTE: a bucket backward did not fill whole still goes, in order
                self._start(bucket)
        self.allreduce.wait(self.handles)
        for key, grad in grads.items():
            bucket, at = self.where[key]
            grads[key] = self.allreduce.take(self.buffers[bucket], at, tuple(grad.shape))
        if self.riding or self.extra.size == 0:
            return [float(v) for v in self.buffers[0][: self.riding]]
        began = time.perf_counter()
        self.ranks.comm.Allreduce(self.ranks.mpi.IN_PLACE, self.extra, op=self.ranks.mpi.SUM)
        self.ranks.mpi_seconds += time.perf_counter() - began
        return [float(v) for v in self.extra]


def _host_state(model: Model) -> dict[str, Any]:
    """The optimizer's state_dict with host arrays (picklable from any backend)."""
    state = model.optimizer.state_dict()
    slots = {k: model.backend.to_host(v) for k, v in state["slots"].items()}
    return {**state, "slots": slots}


_joined: Ranks | None = None


def join(distributed: bool | None) -> Ranks | None:
    """The job's Ranks, or None to train as one process.

    distributed=None: data-parallel when a launcher started more than one
    process (`launched_ranks`); True: the same, and an error if mpi4py is
    missing; False: one process. One rank is one process either way.
    """
    global _joined
    if distributed is False or (distributed is None and launched_ranks() <= 1):
        return None
    if _joined is None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ModelError(
                f"started as {launched_ranks()} processes, but mpi4py is not installed;"
                f" {INSTALL}, or pass distributed=False"
            ) from None
        if MPI.COMM_WORLD.Get_size() <= 1:
            return None
        _joined = Ranks(MPI.COMM_WORLD)
        _abort_on_uncaught(_joined)
    return _joined


def _abort_on_uncaught(ranks: Ranks) -> None:
    """An uncaught error on one rank ends the whole job instead of leaving the rest waiting."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        previous(kind, error, tb)
        ranks.abort(error)

    sys.excepthook = hook


def first_rank_first(work: Callable[[], T]) -> T:
    """work() on rank 0, then on the other ranks: a download into the cache happens once.

    Under a launcher the other ranks wait (a broadcast) until rank 0's call has
    filled the cache, then read it. If rank 0's call raises, so does every rank
    (a ModelError; rank 0 shows the real error). One process: just work().
    """
    ranks = join(None)
    if ranks is None:
        return work()
    if ranks.first:
        try:
            done = work()
        except BaseException as e:
            ranks.comm.bcast(f"{type(e).__name__}: {e}", root=0)
            raise
        ranks.comm.bcast(None, root=0)
        return done
    problem = ranks.comm.bcast(None, root=0)
    if problem is not None:
        raise ModelError(f"rank 0 failed: {problem}")
    return work()


@contextlib.contextmanager
def fail_together(ranks: Ranks | None) -> Iterator[None]:
    """Any error inside ends every rank (with a message naming this one); none: re-raised."""
    if ranks is None:
        yield
        return
    try:
        yield
    except BaseException as e:  # NOTE: the other ranks wait in a collective for this one
        ranks.abort(e)


class ShardedGenerator:
    """A generator whose batch-shaped draws are the global batch's, sliced to this rank's shard.

    Every rank draws the whole global batch's numbers (the generator moves on as
    one process's would) and keeps rows lo:lo+n, so dropout masks do not depend
    on the rank count. Draws whose first axis is not the shard's pass through.
    """

    def __init__(self, rng: Any, shard: slice, total: int) -> None:
        self.rng, self.shard, self.total = rng, shard, total
        self.rows = shard.stop - shard.start

    def _sized(self, size: Any) -> tuple[Any, bool]:
        shape = (size,) if isinstance(size, int) else size
        if shape is None or len(shape) == 0 or shape[0] != self.rows:
            return size, False
        return (self.total, *shape[1:]), True

    def _draw(self, method: str, size: Any, *args: Any, **kwargs: Any) -> Any:
        size, sliced = self._sized(size)
        out = getattr(self.rng, method)(*args, size=size, **kwargs)
        return out[self.shard] if sliced else out

    def random(self, size: Any = None, **kwargs: Any) -> Any:
        """Uniform [0, 1) numbers; batch-shaped draws sliced from the global batch's."""
        return self._draw("random", size, **kwargs)

    def standard_normal(self, size: Any = None, **kwargs: Any) -> Any:
        """Standard normal numbers; batch-shaped draws sliced from the global batch's."""
        return self._draw("standard_normal", size, **kwargs)

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None) -> Any:
        """Uniform [low, high) numbers; batch-shaped draws sliced from the global batch's."""
        return self._draw("uniform", size, low, high)

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> Any:
        """Normal numbers; batch-shaped draws sliced from the global batch's."""
        return self._draw("normal", size, loc, scale)

    def integers(self, low: Any, high: Any = None, size: Any = None, **kwargs: Any) -> Any:
        """Random integers; batch-shaped draws sliced from the global batch's."""
        return self._draw("integers", size, low, high, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)


__all__ = [
    "GradientBuckets",
    "Ranks",
    "ShardedGenerator",
    "fail_together",
    "first_rank_first",
    "join",
    "launched_rank",
    "launched_ranks",
    "quiet_unless_first",
]
