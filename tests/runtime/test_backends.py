"""Backends: lookup by name, the CuPy code path with NumPy standing in, real CuPy if present."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.backends import BackendError, available, get_backend
from cnndsl.runtime.backends.cupy_backend import CupyBackend
from cnndsl.runtime.backends.numpy_backend import NumpyBackend
from cnndsl.training.model import Model

SPEC = """
defaults conv(kernel=3, padding=same, activation=relu)
network n(classes=3) {
    input image: [6, 6, 2]
    return image -> conv(4) -> batchnorm -> maxpool(2) -> separable_conv(6, 3, padding=same)
        -> global_avgpool -> dropout(0.2) -> dense(classes, activation=softmax)
}
"""


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((8, 6, 6, 2), dtype=np.float32), rng.integers(0, 3, 8)


def test_backends_found_by_module_name() -> None:
    assert {"numpy", "cupy"} <= set(available())
    assert isinstance(get_backend("numpy"), NumpyBackend)
    with pytest.raises(BackendError, match="unknown backend 'tpu'; available backends: cupy,"):
        get_backend("tpu")
    backend = NumpyBackend()
    assert get_backend(backend) is backend


def test_import_cnndsl_does_not_import_cupy() -> None:
    code = "import sys, cnndsl, cnndsl.training.model; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_cupy_backend_code_path_with_numpy_standing_in() -> None:
    """Everything the cupy backend does, run with xp=numpy: same results as numpy.

    The stand-in runs the generic kernels, as CuPy would: the reference is the
    NumPy backend without its compiled kernels (which round sums in another order).
    """
    x, y = data()
    net = cnndsl.compile(SPEC)
    reference = Model(net.graph, backend=NumpyBackend(jit=False), seed=4)
    standin = Model(net.graph, backend=CupyBackend(xp=np), seed=4)
    assert standin.backend.name == "cupy"
    for _ in range(2):
        ref_loss, _ = reference.train_step(x, y)
        loss, _ = standin.train_step(x, y)
        assert loss == ref_loss
    for a, b in zip(reference.get_weights(), standin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(standin.predict(x), np.ndarray)
    standin.backend.synchronize()
    history = standin.fit(x, y, epochs=1, batch_size=4, validation_split=0.25)
    assert set(history.history) >= {"loss", "val_loss"}


def test_cupy_backend_transfers() -> None:
    backend = CupyBackend(xp=np, seed=1)
    a = backend.to_device([[1, 2], [3, 4]], dtype=np.float32)
    assert a.dtype == np.float32 and a.flags.c_contiguous
    host = backend.to_host(a[:, ::-1])
    assert isinstance(host, np.ndarray) and host.tolist() == [[2, 1], [4, 3]]
    first = backend.rng.random(3)
    backend.seed(1)
    np.testing.assert_array_equal(backend.rng.random(3), first)


class FakeCupy(types.ModuleType):
    """numpy under cupy's extra names, counting the calls only cupy has."""

    def __init__(self) -> None:
        super().__init__("fakecupy")
        self.calls: list[str] = []
        fake = self

        class Stream:
            def synchronize(self) -> None:
                fake.calls.append("synchronize")

        self.cuda = types.SimpleNamespace(get_current_stream=Stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def asnumpy(self, a: Any) -> np.ndarray:
        self.calls.append("asnumpy")
        return np.asarray(a)


def test_cupy_backend_uses_cupy_transfers_and_streams() -> None:
    fake = FakeCupy()
    x, y = data()
    model = Model(cnndsl.compile(SPEC).graph, backend=CupyBackend(xp=fake), seed=0)
    model.train_step(x, y)
    model.backend.synchronize()
    assert model.predict(x).shape == (8, 3)
    assert "asnumpy" in fake.calls and "synchronize" in fake.calls


def test_cupy_backend_without_cupy_says_how_to_install(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(BackendError, match=r"pip install 'cnndsl\[gpu\]'"):
        get_backend("cupy")


def numpy_blas(info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """numpy's own BLAS: scipy's (loaded by scikit-learn in other tests) is not ours to limit."""
    return [i for i in info if i["user_api"] == "blas" and "numpy" in i["filepath"]]


def test_numpy_backend_thread_scope() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    backend = NumpyBackend(threads=None)
    np.ones((4, 4)) @ np.ones((4, 4))  # make sure BLAS is loaded
    with backend.compute_scope(work=1000):
        blas = numpy_blas(threadpoolctl.threadpool_info())
        assert all(i["num_threads"] == 1 for i in blas)


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
import cnndsl
from cnndsl.runtime.backends.numpy_backend import NumpyBackend
keep = sys.argv[1] == "keep"
text = "network n() {\\n input x: [28, 28, 1]\\n return x -> conv(32, 3, activation=relu)"
text += " -> conv(32, 3, activation=relu) -> flatten -> dense(10, activation=softmax)\\n}"
model = cnndsl.compile(text).build(backend=NumpyBackend(threads=2, keep_freed_memory=keep))
model.compile(optimizer="sgd")
rng = np.random.default_rng(0)
x, y = rng.random((32, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 32)
for _ in range(3):
    model.train_step(x, y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    model.train_step(x, y)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_freed_arrays_are_kept_for_the_next_step() -> None:
    """With malloc keeping freed memory, training steps stop page-faulting their arrays."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)

    def faults(mode: str) -> int:
        run = [sys.executable, "-c", FAULTS_SCRIPT, mode]
        out = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
        return int(out.stdout.split()[-1])

    kept, returned = faults("keep"), faults("default")
    # 5 steps of a 32-channel 26×26 activation (2.7 MB each) and its gradients:
    # thousands of pages when malloc returns them, next to none when it keeps them.
    assert returned > 1000
    assert kept < returned / 10


def test_numpy_backend_options() -> None:
    backend = get_backend("numpy", threads=1, keep_freed_memory=False)
    assert isinstance(backend, NumpyBackend) and backend.workers.lanes == 1
    with pytest.raises(TypeError, match="threads, keep_freed_memory"):
        get_backend("numpy", thread=2)


def test_blas_threads_only_for_a_kernel_with_one_chunk() -> None:
    """In a run, BLAS stays on one thread (lanes run the chunks) but for one-chunk kernels."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones((4, 4)) @ np.ones((4, 4))  # make sure BLAS is loaded

    def blas_threads() -> set[int]:
        info = threadpoolctl.threadpool_info()
        return {i["num_threads"] for i in numpy_blas(info)}

    backend = NumpyBackend(threads=2)
    seen: dict[str, set[int]] = {}
    for work, label in ((10**12, "large"), (1000, "small")):
        with backend.compute_scope(work=work):
            seen[label + " run"] = blas_threads()
            for chunks, key in (([(0, 1)], label), ([(0, 1), (1, 2)], label + " lanes")):
                backend.workers.each(chunks, lambda _, c, k=key: seen.update({k: blas_threads()}))
    assert seen == {
        "large run": {1},
        "large": {2},
        "large lanes": {1},
        "small run": {1},
        "small": {1},
        "small lanes": {1},
    }


# ---- real CuPy on a GPU: skipped cleanly without one ----


def test_cupy_matches_numpy_on_gpu(cupy: Any) -> None:
    x, y = data()
    net = cnndsl.compile(SPEC)
    cpu = Model(net.graph, backend="numpy", seed=2)
    gpu = Model(net.graph, backend="cupy", seed=2)
    assert isinstance(gpu.params["conv_1:kernel"], cupy.ndarray)
    for a, b in zip(cpu.get_weights(), gpu.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # initialised on the host: identical
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-4, atol=1e-6)
    loss_cpu, grads_cpu = cpu.gradients(x, y, training=False)
    loss_gpu, grads_gpu = gpu.gradients(x, y, training=False)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    for key, g in grads_cpu.items():
        np.testing.assert_allclose(grads_gpu[key], g, rtol=1e-3, atol=1e-5)
    gpu.fit(x, y, epochs=1, batch_size=4)
