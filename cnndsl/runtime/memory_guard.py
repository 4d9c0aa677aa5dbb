"""Memory guards: refuse work that will not fit in memory, before allocating it.

Before training, evaluation or prediction, the executor's memory plan for the
batch (`cnndsl.passes.memory`, plus the optimizer's temporaries) is compared
with the memory available: /proc/meminfo's MemAvailable capped by the cgroup
limit (a container's), or the GPU's free memory for CuPy; `max_memory`
(`cnndsl run --max-memory 8G`) replaces that figure. OutOfMemoryPlan gives
both figures and the largest batch that fits, instead of the process being
killed halfway through an epoch. A network's weights are checked the same way
before the executor allocates them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.runtime.errors import ModelError
from cnndsl.summary import human

if TYPE_CHECKING:
    from cnndsl.ir import Graph


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
CGROUP = Path("/sys/fs/cgroup")  # where a container's memory limit is read
GPU_SOURCE = "free GPU memory (cudaMemGetInfo + CuPy's pool)"


class OutOfMemoryPlan(ModelError):
    """A batch whose memory plan exceeds the memory free: both figures, the batch that fits."""

    def __init__(self, message: str, needed: int, available: int, largest: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest_batch = largest


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1000000' -> bytes (binary units); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"'{text}' is not a size; write e.g. 8G, 512M or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available_memory(backend: Any) -> tuple[int, str] | None:
    """(bytes free for new arrays, where the figure comes from), or None if unknown."""
    if backend.name == "cupy":
        try:
            free, _ = backend.xp.cuda.runtime.memGetInfo()
            pool = backend.xp.get_default_memory_pool().free_bytes()  # freed, reusable
        except AttributeError:  # NOTE: a stand-in array module (tests): arrays on the host
            pass
        else:
            return int(free + pool), GPU_SOURCE
    found = _meminfo()
    limit = _cgroup_headroom()
    if limit is not None and (found is None or limit[0] < found[0]):
        return limit
    return found


def _meminfo() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages), "free physical pages (sysconf)"


def _cgroup_headroom() -> tuple[int, str] | None:
    """Limit minus usage of this container's cgroup (v2 or v1); page cache counts as free."""
    for limit_file, usage_file, cache_key in (
        ("memory.max", "memory.current", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),
    ):
        base = CGROUP
        try:
            raw = (base / limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                continue  # no limit
            usage = int((base / usage_file).read_text())
            stat = (base / limit_file).parent / "memory.stat"
            cache = 0
            for line in stat.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
            return max(0, int(raw) - usage + cache), f"the cgroup limit in {base / limit_file}"
        except (OSError, ValueError):
            continue
    return None


def check_weights_fit(graph: Graph, backend: Any, dtype: Any) -> None:
    """Raise OutOfMemoryPlan if a network's weights would not fit, before any is allocated."""
    itemsize = np.dtype(dtype).itemsize
    sizes = [spec.size for layer in graph for spec in layer.weights.values()]
    # NOTE: each weight is drawn in float64 on the host, then converted: the largest
    # weight briefly needs 8 bytes an element more.
    needed = sum(sizes) * itemsize + max(sizes, default=0) * 8
    found = available_memory(backend)
    if found is None or needed <= found[0]:
        return
    raise OutOfMemoryPlan(
        f"the network's weights ({sum(sizes):,} parameters in {np.dtype(dtype).name}) need"
        f" about {human(needed, 'B')}, but only {human(found[0], 'B')} is available"
        f" ({found[1]}); nothing was allocated; use a smaller network (fewer classes or"
        " filters, e.g. --set classes=...) or a machine with more memory",
        needed,
        found[0],
        0,
    )
