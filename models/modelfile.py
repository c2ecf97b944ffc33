"""The model file: one self-describing, versioned blob per trained model, read without executing code.

    magic "TSMF" | format version | JSON manifest | raw little-endian tensor bytes

The manifest says what the model is (`kind`), how it was configured (`config`), how its inputs
are normalised (`norm`), what it was trained on (`data`: source, rows, columns, a digest), and
where each tensor lies in the payload. Loading parses JSON and copies bytes into tensors, so a
crafted file can be wrong (ValueError) but cannot run anything: no pickle anywhere. Offline
writes these files; the daemon and `streamer bench` read warm starts from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import frame, unframe

MAGIC = b"TSMF"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def read(path: str | Path, source: str) -> bytes:
    """A model file's bytes, or ValueError that names `source` and why (missing, unreadable)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{source}: {exc.strerror}") from None


def encode(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Manifest (JSON-able) and named tensors -> bytes."""
    index, chunks, offset = [], [], 0
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype}; model files hold {sorted(_DTYPES)}")
        arr = t.detach().cpu().contiguous().numpy()
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        index.append({"name": name, "dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    return frame(MAGIC, FORMAT_VERSION, {**manifest, "tensors": index}) + b"".join(chunks)


def decode(blob: bytes, what: str = "model file") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """bytes -> (manifest, tensors), or ValueError saying what is wrong."""
    if blob[:4] != MAGIC:
        raise ValueError(f"{what} is not a model file (bad magic): write one with `offline train ...`")
    manifest, start = unframe(blob, MAGIC, FORMAT_VERSION, what)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), list):
        raise ValueError(f"{what} manifest has no tensor index")
    payload = memoryview(blob)[start:]
    tensors: dict[str, torch.Tensor] = {}
    for entry in manifest.pop("tensors"):
        try:
            name, dtype, shape = str(entry["name"]), _DTYPES[entry["dtype"]], [int(s) for s in entry["shape"]]
            offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{what}: malformed tensor entry {str(entry)[:120]}: {exc!r}") from None
        item = torch.empty((), dtype=dtype).element_size()
        count = int(np.prod(shape)) if shape else 1
        if min(shape, default=0) < 0 or count * item != nbytes or offset < 0 or offset + nbytes > len(payload):
            raise ValueError(f"{what}: tensor {name!r} does not fit the payload (shape {shape}, {nbytes} bytes)")
        np_dtype = np.dtype(str(dtype).removeprefix("torch.")).newbyteorder("<")
        arr = np.frombuffer(payload[offset : offset + nbytes], dtype=np_dtype).astype(np_dtype.newbyteorder("="))
        tensors[name] = torch.from_numpy(arr.reshape(shape).copy())
    return manifest, tensors


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `model`, or ValueError naming what does not fit."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or extra or wrong:
        raise ValueError(f"{source}: its weights do not fit the model it describes "
                         f"(missing {missing[:4]}, unexpected {extra[:4]}, wrong shape {wrong[:4]})")
    model.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own})
