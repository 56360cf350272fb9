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
from typing import Callable, Iterable, Iterator

import torch

from ..config import DataConfig

# Below this many rows a table is decoded in the main process: starting worker processes (a fork
# each, then their first batch) costs more than decoding a small table takes.
PARALLEL_ROWS = 1000


def worker_count(cfg: DataConfig, n_rows: int) -> int:
    """data.workers, or by default min(4, CPUs - 1): one core stays with the training process.
    Elsewhere than Linux the default is 0 (forking a process that has started threads is unsafe on macOS)."""
    if cfg.workers is not None:
        return cfg.workers
    if n_rows < PARALLEL_ROWS or sys.platform != "linux":     # workers are forked: safe by default on Linux only
        return 0
    return max(0, min(4, len(os.sched_getaffinity(0)) - 1))


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
        return self.make(indices)


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
        self.order = _Order()
        # generator: the loader draws its workers' base seed from it; without one it would draw from
        # the global RNG and shift every later dropout mask, so runs would depend on the worker count.
        self.loader = torch.utils.data.DataLoader(
            _Make(make), sampler=self.order, batch_size=None, collate_fn=_as_made, num_workers=workers,
            prefetch_factor=prefetch if workers > 0 else None, persistent_workers=persistent and workers > 0,
            generator=torch.Generator(), multiprocessing_context="fork" if workers > 0 else None)

    def __call__(self, batches: Iterable[list]) -> Iterator:
        self.order.batches = list(batches)
        return iter(self.loader)


def in_order(n: int, size: int, start: int = 0) -> list[list[int]]:
    """Rows start..n-1 as consecutive batches of `size`."""
    return [list(range(a, min(a + size, n))) for a in range(start, n, size)]
