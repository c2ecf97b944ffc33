"""Counter-based random numbers, one independent stream per series key.

Why not `torch.Generator`: a generator's draws depend on how many numbers were drawn before,
so a key in a bank of 1,000 would see different noise than the same key alone. Here every
draw is a pure function of (key seed, counter, stream, index), hashed with splitmix64, so

* a bank of K keys gives exactly the numbers of K banks of one key,
* a key's state restored from a snapshot continues its stream exactly,
* two runs with the same seeds are bit-identical.

Gaussian noise for big tensors (the particle filter's random walk over ~100M parameters per
step) comes from a fixed pool of N(0, 1) samples: each row of noise is a contiguous slice of
the pool starting at a hashed offset. Drawing 100M fresh normals costs ~430 ms on a 2-core
machine; slicing the pool costs one memory copy. Rows that start at different offsets are
different sequences of independent normals; two rows coincide only when two hashes collide
(probability 1/pool size per pair), which is harmless for a jitter kernel.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
POOL_SIZE = 1 << 22  # 4M normals = 16 MiB, large against any row length used here


def key_seed(name: str, seed: int) -> int:
    """A 62-bit seed for a series key, stable across processes (unlike `hash()`)."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def hash_bits(seeds: torch.Tensor, counter: torch.Tensor, stream: int, n: int) -> np.ndarray:
    """uint64 bits [B, n], a pure function of (seed_b, counter_b, stream, j)."""
    s = seeds.cpu().numpy().astype(np.uint64)[:, None]  # [B, 1]
    c = counter.cpu().numpy().astype(np.uint64)[:, None]  # [B, 1]
    j = np.arange(n, dtype=np.uint64)[None, :]  # [1, n]
    with np.errstate(over="ignore"):
        z = _splitmix64(s ^ _splitmix64(c * np.uint64(0x100000001B3) + np.uint64(stream)))
        return _splitmix64(z + j * np.uint64(0xD1B54A32D192ED03))


def uniform(seeds: torch.Tensor, counter: torch.Tensor, stream: int, n: int, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) draws [B, n] with 53 bits of resolution."""
    bits = hash_bits(seeds, counter, stream, n) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * (1.0 / (1 << 53))).to(dtype)


_POOLS: dict[torch.dtype, torch.Tensor] = {}


def _pool(dtype: torch.dtype) -> torch.Tensor:
    if dtype not in _POOLS:
        g = torch.Generator().manual_seed(20180801)
        with torch.inference_mode(False):  # kept for the process: a normal tensor, wherever first drawn
            _POOLS[dtype] = torch.randn(POOL_SIZE, generator=g, dtype=torch.float64).to(dtype)
    return _POOLS[dtype]


def normal_rows(
    seeds: torch.Tensor, counter: torch.Tensor, stream: int, rows: int, width: int, dtype=torch.float32
) -> torch.Tensor:
    """N(0, 1) noise [B, rows, width]: row r of key b is a pool slice at a hashed offset."""
    if width > POOL_SIZE // 4:
        raise ValueError(f"noise rows of width {width} exceed the pool's design range")
    pool = _pool(dtype)
    offsets = hash_bits(seeds, counter, stream, rows) % np.uint64(POOL_SIZE - width)  # [B, rows]
    windows = pool.unfold(0, width, 1)  # [POOL_SIZE - width + 1, width], a view
    idx = torch.from_numpy(offsets.astype(np.int64)).reshape(-1)
    return windows.index_select(0, idx).reshape(seeds.shape[0], rows, width)


# Stream ids: independent families of draws for one key.
STREAM_INIT = 1  # initial weights
STREAM_WALK = 2  # particle random walk
STREAM_RESAMPLE = 3  # systematic resampling offsets
STREAM_STATE = 4  # noise on particle c_t, y_t
