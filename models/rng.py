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

from models.jit import NP_FLOAT, Kernel

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


# A random walk of at most this many noise rows (keys x particles) takes the compiled loop (`add_normal_rows`): one
# pass that hashes each row's offset and adds its pool slice, where numpy's hash is some thirty calls on tiny arrays
# and torch gathers the slices into a new tensor before adding them. speed.py's compiled-loops table has it ahead at
# every width on one thread; a wide wave keeps torch's path, whose threads share it (the particle filter asks per
# wave, then walks a block of keys at a time).
WALK_MAX_ROWS = 16 * 64


def add_normal_rows(out: torch.Tensor, seeds: torch.Tensor, counter: torch.Tensor, stream: int, scale: float,
                    compiled: bool | None = None) -> None:
    """out [B, rows, width] += scale * `normal_rows(seeds, counter, stream, rows, width)`, in place: the same
    numbers (the same hash, the same pool slices), added by one compiled pass for a few rows, else by torch.
    `compiled=False` takes torch's path whatever the rows (a caller that walks a wide wave a block at a time)."""
    B, rows, width = out.shape
    if compiled is None:
        compiled = B * rows <= WALK_MAX_ROWS and out.is_contiguous() and not out.requires_grad \
            and WALK.usable(out.dtype)
    if compiled:
        if width > POOL_SIZE // 4:
            raise ValueError(f"noise rows of width {width} exceed the pool's design range")
        pool = _pool(out.dtype).numpy()
        WALK.compiled()(out.numpy(), seeds.numpy().view(np.uint64), counter.numpy().view(np.uint64), np.uint64(stream),
                        pool, scale)
        return
    out.add_(normal_rows(seeds, counter, stream, rows, width, out.dtype), alpha=scale)


def _walk_rows(out, seeds, counter, stream, pool, scale):  # pragma: no cover - compiled
    """`add_normal_rows` one noise row at a time: `hash_bits`'s splitmix64 for each row's pool offset, then its slice
    added. out [B, rows, width] in place; seeds, counter [B] uint64 (the int64 tensors' bits)."""
    B, rows, width = out.shape
    span = np.uint64(pool.shape[0] - width)

    def splitmix64(z):  # `_splitmix64`, on one uint64 (numba's uint64 arithmetic wraps as the mask does)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    for b in range(B):
        z = splitmix64(seeds[b] ^ splitmix64(counter[b] * np.uint64(0x100000001B3) + stream))
        for r in range(rows):
            at = splitmix64(z + np.uint64(r) * np.uint64(0xD1B54A32D192ED03)) % span
            for j in range(width):
                out[b, r, j] += scale * pool[at + np.uint64(j)]


def _warm_up(dtype: torch.dtype) -> None:
    """Run the loop once for this float width, on one row of one number (compiling or loading it)."""
    one = torch.ones(1, dtype=torch.int64)
    WALK.compiled()(np.zeros((1, 1, 1), NP_FLOAT[dtype]), one.numpy().view(np.uint64), one.numpy().view(np.uint64),
                    np.uint64(STREAM_WALK), _pool(dtype).numpy(), 1.0)


WALK = Kernel(_walk_rows, _warm_up, "particle filter's random walk")
