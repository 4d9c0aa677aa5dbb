"""PyTorch state dicts: `.safetensors` files and `torch.save`d `.pt`/`.pth` files.

Input: a path whose content is safetensors, or a pickle/zip written by
`torch.save`. Output: a `WeightSource` of the modules with weights (keys
'module.path.param' grouped by module path), each converting its arrays to
our layouts for the layer it is matched with:

- conv weights [out, in/groups, kh, kw] (OIHW) -> kernels [kh, kw, in/groups, out];
  a depthwise conv's [C, 1, kh, kw] -> [kh, kw, C, 1];
- linear weights [out, in] -> [in, out]; for the first dense layer after
  `flatten`, its rows reordered from PyTorch's channels-first flattening
  (c, h, w) to ours (h, w, c);
- batchnorm weight, bias, running_mean, running_var -> gamma, beta,
  moving_mean, moving_variance (`num_batches_tracked` is ignored).

safetensors files are read with the safetensors package's NumPy API (no
torch needed). `.pt`/`.pth` files are pickles: they are read only through
`torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers, and only when torch is installed; without it the error
says how to turn the file into safetensors. Nothing else is unpickled.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import struct
from typing import Any

import numpy as np

from cnndsl.formats.weight_sources import Signature, SourceLayer, Target, WeightSource, natural_key
from cnndsl.runtime.executor import ModelError

# PyTorch's batchnorm parameters under our (Keras') names.
BATCHNORM_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
IGNORED = ("num_batches_tracked",)
NESTED_STATE = ("state_dict", "model_state_dict", "model", "module")
TO_SAFETENSORS = (
    'python -c "import torch, safetensors.torch as s;'
    " s.save_file(torch.load('IN.pth', weights_only=True), 'OUT.safetensors')\""
)


class TorchModule(SourceLayer):
    """A PyTorch module's parameters; converted to our layouts when matched."""

    def __init__(self, name: str, params: dict[str, np.ndarray]) -> None:
        self.params = params
        super().__init__(name, _kind(params), [(_key(name, p), a) for p, a in params.items()])

    def signatures(self) -> list[Signature]:
        p = self.params
        bias = [(int(p["bias"].shape[0]),)] if "bias" in p else []
        if self.kind == "BatchNorm":
            return [tuple(tuple(p[t].shape) for t in BATCHNORM_NAMES.values() if t in p)]
        if self.kind == "Conv2d":
            o, i, kh, kw = (int(d) for d in p["weight"].shape)
            found = [((kh, kw, i, o), *bias)]
            if i == 1 and o > 1:
                found.append(((kh, kw, o, 1), *bias))  # depthwise (groups = channels)
            return found
        if self.kind == "Linear":
            o, i = (int(d) for d in p["weight"].shape)
            return [((i, o), *bias)]
        return []

    def arrays(self, target: Target) -> list[tuple[str, np.ndarray]]:
        if self.kind == "BatchNorm":
            return [
                (_key(self.name, BATCHNORM_NAMES[n]), self.params[BATCHNORM_NAMES[n]])
                for n in target.names
            ]
        how = self._conversion(target)
        out = [(f"{_key(self.name, 'weight')} ({how})", self._kernel(target))]
        if "bias" in self.params:
            out.append((_key(self.name, "bias"), self.params["bias"]))
        return out

    def _conversion(self, target: Target) -> str:
        """How the weight is rearranged, for the load report."""
        if self.kind == "Conv2d":
            o, i = self.params["weight"].shape[:2]
            if i == 1 and o > 1 and target.shapes[0][2:] == (o, 1):
                return "[C, 1, kh, kw] -> [kh, kw, C, 1]"
            return "OIHW -> HWIO"
        if _spatial(target):
            return "[out, in] -> [in, out], rows from (c, h, w) to (h, w, c) order"
        return "[out, in] -> [in, out]"

    def _kernel(self, target: Target) -> np.ndarray:
        w = self.params["weight"]
        if self.kind == "Conv2d":
            o, i, kh, kw = w.shape
            if i == 1 and o > 1 and target.shapes[0] == (kh, kw, o, 1):
                return w.transpose(2, 3, 0, 1)  # depthwise: [C, 1, kh, kw] -> [kh, kw, C, 1]
            return w.transpose(2, 3, 1, 0)
        kernel = w.T
        spatial = _spatial(target)
        if spatial is not None:
            h, wd, c = spatial
            # PyTorch flattens (c, h, w); we flatten (h, w, c): reorder the input rows.
            kernel = kernel.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(h * wd * c, -1)
        return kernel


def _spatial(target: Target) -> tuple[int, ...] | None:
    shape = target.flattened
    return shape if shape is not None and math.prod(shape[:2]) > 1 else None


def _key(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def _kind(params: dict[str, np.ndarray]) -> str:
    if "running_mean" in params and "running_var" in params:
        return "BatchNorm"
    weight = params.get("weight")
    if weight is not None and weight.ndim == 4:
        return "Conv2d"
    if weight is not None and weight.ndim == 2:
        return "Linear"
    return "module"


# ---- reading ----


def read_safetensors(path: str) -> WeightSource:
    """A .safetensors file's tensors as modules; no torch needed."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ModelError(
            f"{path}: a safetensors file; reading it needs the safetensors package:"
            " pip install safetensors"
        ) from None
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                try:
                    tensors[key] = f.get_tensor(key)
                except TypeError:  # NumPy without ml_dtypes knows no bfloat16
                    tensors[key] = _bfloat16(path, key)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ModelError(
            f"{path}: truncated or corrupt safetensors file ({e}); download or save it again"
        ) from None
    for key, array in tensors.items():
        if array.dtype.name == "bfloat16":  # where ml_dtypes taught NumPy the type
            tensors[key] = array.astype(np.float32)
    # NOTE: safetensors stores tensors sorted by name: natural order keeps 'layer2' before
    # 'layer10', and the matcher settles the rest from the network's graph.
    items = sorted(tensors.items(), key=lambda kv: natural_key(kv[0]))
    source = _modules(path, "safetensors", items)
    source.order = "names"
    return source


def _bfloat16(path: str, key: str) -> np.ndarray:
    """One bfloat16 tensor as float32, read from the file: bfloat16 is float32's upper half."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))[key]
        if entry.get("dtype") != "BF16":
            raise TypeError(f"tensor '{key}' has dtype {entry.get('dtype')}, which NumPy lacks")
        start, end = (int(o) for o in entry["data_offsets"])
        shape = [int(d) for d in entry["shape"]]
        f.seek(8 + length + start)
        raw = f.read(end - start)
    if len(raw) != 2 * math.prod(shape):
        raise ValueError(f"tensor '{key}' holds {len(raw)} bytes, not {2 * math.prod(shape)}")
    upper = np.frombuffer(raw, "<u2").astype("<u4") << 16
    return upper.view("<f4").reshape(shape)


def read_torch(path: str) -> WeightSource:
    """A torch.save'd state dict, through torch.load(weights_only=True) only."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise ModelError(
            f"{path}: a PyTorch file (a pickle); cnndsl reads those only through"
            " torch.load(weights_only=True), and torch is not installed. Install torch, or"
            f" convert the file to safetensors where torch is installed: {TO_SAFETENSORS}"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad or unsafe file
        reason = _first_sentence(str(e)) or type(e).__name__
        raise ModelError(
            f"{path}: torch.load(weights_only=True) refused it ({reason}); pass a state dict"
            " saved with torch.save(model.state_dict(), path), or a .safetensors file"
        ) from None
    state = _unwrap(state, torch)
    if state is None:
        raise ModelError(
            f"{path}: holds no tensors by name (not a state dict); save one with"
            " torch.save(model.state_dict(), path)"
        )
    items = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
                t = t.float()  # half and bfloat16: NumPy has no bfloat16
            items.append((str(key), t.numpy()))
    return _modules(path, "PyTorch state dict", items)


def _first_sentence(text: str) -> str:
    """torch's error, without its terminal colours and advice to load the file anyway."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""


def _unwrap(state: Any, torch: Any) -> dict[str, Any] | None:
    """The dict of tensors, also inside a checkpoint {'state_dict': {...}, 'epoch': ...}."""
    if not isinstance(state, dict):
        return None
    if any(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    for key in NESTED_STATE:
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return None


def _modules(path: str, fmt: str, items: list[tuple[str, np.ndarray]]) -> WeightSource:
    """Group 'a.b.weight' keys by module 'a.b', in the order given."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    ignored: list[str] = []
    for key, array in items:
        module, _, param = key.rpartition(".")
        if param in IGNORED:
            ignored.append(key)
            continue
        grouped.setdefault(module, {})[param] = np.asarray(array)
    layers: list[SourceLayer] = []
    for module, params in grouped.items():
        if "bias" in params and "weight" in params and list(params)[0] != "weight":
            params = {
                "weight": params.pop("weight"),
                **params,
            }  # weight first, as modules hold them
        layers.append(TorchModule(module, params))
    return WeightSource(path, fmt, layers, "torch", ignored=ignored)


__all__ = ["TorchModule", "read_safetensors", "read_torch"]
