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
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

from ..config import DataConfig

# Below this many rows a table is decoded in the main process: starting worker processes (a fork
# each, then their first batch) costs more than decoding a small table takes.
PARALLEL_ROWS = 1000
# A tensor a worker returns goes through shared memory: a new segment, and its file descriptor
# handed over on a socket connection per tensor (about 3 ms of the two processes' time for a
# batch of 11 tensors, 9% of the loading rate on 2 cores, bench/scale.py). Below this size it
# travels inside the pickled batch instead, as bytes: only the pixels and spectrograms are shared.
INLINE_BYTES = 64 * 1024


def worker_count(cfg: DataConfig, n_rows: int) -> int:
    """data.workers, or by default min(4, CPUs - 1): one core stays with the training process.
    Elsewhere than Linux the default is 0 (forking a process that has started threads is unsafe on macOS)."""
    if cfg.workers is not None:
        return cfg.workers
    if n_rows < PARALLEL_ROWS or sys.platform != "linux":     # workers are forked: safe by default on Linux only
        return 0
    return max(0, min(4, len(os.sched_getaffinity(0)) - 1))


@contextmanager
def threads_beside(workers: int):
    """Within it, the training process's intra-op threads are the cores `workers` leave (at least
    one): torch's default (every core) made workers and training threads fight for 2 cores, and an
    epoch was 1.4-1.5x slower than with one training thread (bench/scale.py, 10k rows: 539 vs 821
    rows/s decoding every epoch, 1,390 vs 2,022 from the warm cache). Left alone without workers,
    when OMP_NUM_THREADS is set (torchrun sets it), or when torch already uses fewer threads."""
    before = torch.get_num_threads()
    want = max(1, len(os.sched_getaffinity(0)) - workers) if hasattr(os, "sched_getaffinity") else before
    if workers > 0 and "OMP_NUM_THREADS" not in os.environ and want < before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def _inline(x):
    """Worker side: small tensors in dicts, lists and tuples become _Inline."""
    if isinstance(x, torch.Tensor):
        return _Inline(x) if x.nbytes < INLINE_BYTES and x.layout == torch.strided else x
    if isinstance(x, dict):
        return {k: _inline(v) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_inline(v) for v in x)
    return x


def _restore(x):
    """Main process side: the inverse of _inline."""
    if isinstance(x, _Inline):
        return x.tensor()
    if isinstance(x, dict):
        return {k: _restore(v) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_restore(v) for v in x)
    return x


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
