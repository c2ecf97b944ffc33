"""Compiled loops for waves of few rows (numba): what every such kernel here shares.

For a few keys a wave's cost is the count of torch calls, not their arithmetic (1-3 us each,
whatever the size). A kernel is the same arithmetic written as loops over rows and units and
compiled into one call; torch keeps the wide waves, where its vectorised and threaded kernels win.
Each kernel module holds its loops and its dispatch (the widest wave it serves, measured in
`benchmarks/speed.py`); this module compiles them, keeps the compiled code, and falls back:

- numba is imported at the first compile, so a process that never steps a small wave never loads it;
- each float width compiles at its first call (about 1-2 s a kernel), and the compiled code is kept
  beside the kernel's module, or under NUMBA_CACHE_DIR, so that a later process loads it instead;
- where a kernel cannot compile (numba missing or broken on a platform), `Kernel.usable` warns once
  and says no, and the caller takes its torch path: slower for few keys, the same numbers.

No fast-math flag assumes finite values (nnan, ninf): a state gone non-finite must stay non-finite
so that the bank resets the key. Reassociation and contraction let loops over units vectorise; but
under reassociation `math.isfinite` of an expression is folded to True (it is x - x == 0), so a
kernel asks `math.isnan(v) or math.isinf(v)`, which hold (tests/unit/test_kernels.py checks both).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

FLAGS = {"reassoc", "contract", "nsz"}
# the float widths a loop is compiled for (others take the torch path), and their numpy types
NP_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}
TORCH_FLOAT = {np.dtype(v): k for k, v in NP_FLOAT.items()}  # a numpy array's float width as torch names it


class Kernel:
    """One loop, compiled at its first use (`compiled`), with a check that it runs here (`usable`).

    `warm_up(dtype)` calls the kernel once on the smallest inputs of that float width; `what` names it in
    the fallback's warning. `flags`: the fast-math flags it is compiled with (none: IEEE arithmetic in the
    written order, the same numbers as numpy's element-wise passes)."""

    def __init__(self, loop: Callable[..., Any], warm_up: Callable[[torch.dtype], None], what: str,
                 flags: frozenset[str] | set[str] = FLAGS) -> None:
        self.loop, self.warm_up, self.what, self.flags = loop, warm_up, what, set(flags)
        self._compiled: Callable[..., Any] | None = None
        self._compiling = threading.Lock()
        self._usable: dict[torch.dtype, bool] = {}

    def compiled(self) -> Callable[..., Any]:
        """The compiled loop (numba's dispatcher: each float width compiles, or loads, at its first call)."""
        if self._compiled is not None:  # a few-key wave calls dozens of loops: no lock once one is there
            return self._compiled
        with self._compiling:
            if self._compiled is None:
                import numba

                options: dict[str, Any] = {"nogil": True, "fastmath": self.flags or False, "error_model": "numpy"}
                try:
                    self._compiled = numba.njit(cache=True, **options)(self.loop)
                except RuntimeError:  # nowhere to keep compiled code (read-only, no NUMBA_CACHE_DIR): per process
                    self._compiled = numba.njit(**options)(self.loop)
        return self._compiled

    def usable(self, dtype: torch.dtype) -> bool:
        """Whether the kernel runs here for this float width (compiling it at the first ask): no, quietly, for a
        width outside NP_FLOAT; where it cannot compile, one warning says so and the answer stays no."""
        ok = self._usable.get(dtype)
        if ok is None and dtype not in NP_FLOAT:
            ok = self._usable[dtype] = False
        if ok is None:
            try:
                self.warm_up(dtype)
                ok = True
            except Exception as exc:  # any failure of this speed-up falls back to torch, loudly once
                warnings.warn(f"the compiled {self.what} is unavailable ({type(exc).__name__}: {exc}); "
                              "torch does its work", RuntimeWarning, stacklevel=2)
                ok = False
            self._usable[dtype] = ok
        return ok


def array(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a C-contiguous numpy array for a loop to read (its own memory when it is so laid out).
    A tensor outside autograd is not detached first: a few-key wave asks this dozens of times."""
    return np.ascontiguousarray(t.detach().numpy() if t.requires_grad else t.numpy())


def memory(t: torch.Tensor) -> np.ndarray:
    """A tensor's memory as numpy, no copy (for a loop that writes it in place, the caller has checked it is
    contiguous)."""
    return t.detach().numpy() if t.requires_grad else t.numpy()


def kernels() -> tuple[Kernel, ...]:
    """Every compiled loop of the models (imported here, at the first ask: the modules that hold them import this)."""
    from models import bank_kernel, kalman_kernel, normalize, rng
    from models.learners import adam_kernel, base, baselines, bptt_kernel, ekf_kernel, ensemble, mlp, pf

    return (bptt_kernel.KERNEL, adam_kernel.KERNEL, mlp.FORWARD, ensemble.MIX, pf.MOVE, rng.WALK,
            *kalman_kernel.KERNELS, normalize.APPLY, normalize.UPDATE, *bank_kernel.KERNELS, base.FINITE,
            baselines.RLS_PREDICT, baselines.RLS_STEP, *ekf_kernel.KERNELS)


def warm_up(dtype: torch.dtype = torch.float32) -> bool:
    """Compile (or load) every kernel for this float width now: the daemon does it in a worker thread while it
    joins its group, so that its first wave does not wait. Whether all of them run here."""
    return all([k.usable(dtype) for k in kernels()])
