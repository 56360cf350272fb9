"""Batches made in DataLoader worker processes, in the order the caller asks for them.

The caller chooses every batch's rows (the trainer's seeded per-epoch permutation, sharded by
rank; a table's rows in order for validation and the cache build); workers only run
`make(indices) -> batch` (decode or read the cache, then collate), so 0 and N workers give the same
batches in the same order. At most workers x data.prefetch batches are in flight; the training
process holds only those, never the table's decoded rows.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator

import torch

from ..config import DataConfig

# Below this many rows a table is decoded in the main process: starting worker processes (a fork
# each, then their first batch) costs more than decoding a small table takes.
PARALLEL_ROWS = 1000
# A tensor a worker returns goes through shared memory: a new segment, and its file descriptor
# handed over on a socket connection per tensor (for a batch of 11 tensors about 4 ms of the two
# processes' CPU more than sending the 9 small ones inline; bench/scale.py loading went 914 -> 994
# rows/s). Below this size a tensor travels inside the pickled batch, as bytes: only the pixels and
# spectrograms are shared.
INLINE_BYTES = 64 * 1024


def worker_count(cfg: DataConfig, n_rows: int) -> int:
    """data.workers, or by default min(4, CPUs - 1): one core stays with the training process.
    Elsewhere than Linux the default is 0 (forking a process that has started threads is unsafe on macOS)."""
    if cfg.workers is not None:
        return cfg.workers
    if n_rows < PARALLEL_ROWS or sys.platform != "linux":     # workers are forked: safe by default on Linux only
        return 0
    return max(0, min(4, len(os.sched_getaffinity(0)) - 1))


def thread_options(workers: int) -> list[int]:
    """The training process's intra-op thread counts worth trying beside `workers` worker
    processes: the cores the workers leave, and torch's own choice (every core). Empty when there
    is nothing to choose: no workers, OMP_NUM_THREADS set (torchrun sets it), or torch already at
    the lower count."""
    before = torch.get_num_threads()
    if workers == 0 or "OMP_NUM_THREADS" in os.environ or not hasattr(os, "sched_getaffinity"):
        return []
    low = max(1, len(os.sched_getaffinity(0)) - workers)
    return [low, before] if low < before else []


class ThreadTuner:
    """Intra-op threads of the training process beside DataLoader workers, chosen by timing real
    steps. Neither choice wins everywhere (2 cores, bench/scale.py and digit transcription): a tiny
    model (27 ms a step) trained 1.5x faster on one thread than on two beside 2 workers, decoding
    or not (the threads' fork-join and the workers fought for the cores); a 10x heavier one 1.5x
    faster on two threads beside 1 worker that only read caches. So the first epoch of a run times
    `steps` steps with each option (after step 1, which pays one-off costs), keeps the faster, and
    the checkpoint keeps the choice (`TrainState.threads`), so a resumed run does not choose again.
    Timed from one step's end to the next, data waits included (a slowed worker shows there)."""

    def __init__(self, workers: int, chosen: int | None, steps: int = 12):
        self.before, self.steps = torch.get_num_threads(), steps
        self.options = thread_options(workers)
        self.chosen = chosen if self.options else None
        self.times: list[float] = []
        self.t_last: float | None = None
        torch.set_num_threads(self.chosen or self.before)

    def use(self, chosen: int | None):
        """A choice made elsewhere: a resumed run's earlier one, or the default where an epoch is too
        short to time (None: nothing changes)."""
        if chosen is not None and self.options:
            self.chosen = chosen
            torch.set_num_threads(chosen)

    def tuning(self, step: int) -> bool:
        return self.chosen is None and bool(self.options) and 2 <= step <= 1 + self.steps * len(self.options)

    def before_step(self, step: int):
        """step: the number (from 1) of the step about to run."""
        if self.tuning(step):
            torch.set_num_threads(self.options[(step - 2) // self.steps])

    def after_step(self, step: int) -> int | None:
        """Returns the chosen thread count at the step that decides, else None."""
        now = time.perf_counter()
        if self.tuning(step) and self.t_last is not None:
            self.times.append(now - self.t_last)
        self.t_last = now
        if self.chosen is None and self.options and step == 1 + self.steps * len(self.options):
            if len(self.times) == self.steps * len(self.options):     # every step timed (none on a resume)
                per = [sum(self.times[i * self.steps:(i + 1) * self.steps]) for i in range(len(self.options))]
                self.chosen = self.options[per.index(min(per))]
            else:
                self.chosen = self.before
            torch.set_num_threads(self.chosen)
            return self.chosen
        return None

    def close(self):
        torch.set_num_threads(self.before)


class _Order:
    """The sampler: yields the index lists of the batches set for this pass (main process only)."""
    def __init__(self):
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _Make(torch.utils.data.Dataset):
    """Item `indices` is the batch of those rows: each worker makes whole batches."""
    def __init__(self, make: Callable):
        self.make = make

    def __getitem__(self, indices):
        batch = self.make(indices)
        return _inline(batch) if torch.utils.data.get_worker_info() is not None else batch


class _Inline:
    """A small tensor as pickled bytes (see INLINE_BYTES); `tensor()` gives it back, equal in
    dtype, shape and values. Kept apart from numpy so that every dtype (bfloat16 too) travels."""
    def __init__(self, t: torch.Tensor):
        t = t.detach().contiguous()
        self.dtype, self.shape = t.dtype, tuple(t.shape)
        self.data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""

    def tensor(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(self.dtype).reshape(self.shape)


def _walk(x, leaf: Callable):
    """x with leaf(v) in place of each value inside its dicts, lists and tuples."""
    if isinstance(x, dict):
        return {k: _walk(v, leaf) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_walk(v, leaf) for v in x)
    return leaf(x)


def _inline(x):
    """Worker side: small tensors become _Inline."""
    return _walk(x, lambda v: _Inline(v) if isinstance(v, torch.Tensor) and v.nbytes < INLINE_BYTES
                 and v.layout == torch.strided else v)


def _restore(x):
    """Main process side: the inverse of _inline."""
    return _walk(x, lambda v: v.tensor() if isinstance(v, _Inline) else v)


def _as_made(batch):
    return batch


class BatchStream:
    """stream(batches) yields make(b) for each b in order, made by `workers` processes.

    persistent=True keeps the workers between passes (the trainer's epochs), so they start once.
    Workers are forked: `make` and what it reads (tables, processors) are inherited, never pickled.
    """

    def __init__(self, make: Callable, workers: int, prefetch: int = 2, persistent: bool = False):
        if workers > 0:
            # Rust tokenizers warn (and turn their threads off) when forked after using threads.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.order, self.workers = _Order(), workers
        # generator: the loader draws its workers' base seed from it; without one it would draw from
        # the global RNG and shift every later dropout mask, so runs would depend on the worker count.
        self.loader = torch.utils.data.DataLoader(
            _Make(make), sampler=self.order, batch_size=None, collate_fn=_as_made, num_workers=workers,
            prefetch_factor=prefetch if workers > 0 else None, persistent_workers=persistent and workers > 0,
            generator=torch.Generator(), multiprocessing_context="fork" if workers > 0 else None)

    def __call__(self, batches: Iterable[list]) -> Iterator:
        self.order.batches = list(batches)
        return iter(self.loader) if self.workers == 0 else map(_restore, self.loader)


def in_order(n: int, size: int, start: int = 0) -> list[list[int]]:
    """Rows start..n-1 as consecutive batches of `size`."""
    return [list(range(a, min(a + size, n))) for a in range(start, n, size)]
