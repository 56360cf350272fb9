"""Dynamic batching: concurrent requests wait in one queue and run through the model together.

A batch closes when it holds `max_batch_size` rows or `max_wait_ms` after its first request
arrived, whichever comes first. The model runs in one worker thread, so the event loop keeps
accepting, decoding and answering requests while a batch computes; the next batch gathers
meanwhile. Each request's rows stay together and its outputs are sliced back by count.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Pending:
    rows: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class BatchTimeout(Exception):
    """A request waited (queue plus inference) longer than its timeout."""


class Batcher:
    def __init__(self, run: Callable[[list], dict], max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run_fn, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.queued_rows = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyfuse-model")
        self.task: asyncio.Task | None = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, timeout_s: float = 30.0):
        """After the server has stopped taking requests: finish what is queued (for up to timeout_s), then stop."""
        deadline = time.perf_counter() + timeout_s
        while self.queued_rows and time.perf_counter() < deadline and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, rows: list, timeout_s: float) -> dict:
        """Queue one request's rows; its slice of the batch's outputs, {name: (len(rows), ...)}."""
        item = Pending(rows, asyncio.get_running_loop().create_future())
        self.queued_rows += len(rows)
        self.queue.put_nowait(item)
        try:
            # shield: a timed-out request leaves its future to the batch (which skips or ignores it).
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except asyncio.TimeoutError:
            item.future.cancel()
            raise BatchTimeout() from None

    async def _loop(self):
        loop = asyncio.get_running_loop()
        carry: Pending | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            batch, n = [first], len(first.rows)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch_size:
                try:
                    item = self.queue.get_nowait() if not self.queue.empty() else \
                        await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if n + len(item.rows) > self.max_batch_size:
                    carry = item          # a request's rows are never split: it opens the next batch
                    break
                batch.append(item)
                n += len(item.rows)
            await self._run(loop, batch)

    async def _run(self, loop, batch: list[Pending]):
        self.queued_rows -= sum(len(p.rows) for p in batch)
        live = [p for p in batch if not p.future.done()]      # timed-out requests are not computed
        if not live:
            return
        rows = [r for p in live for r in p.rows]
        if self.on_batch is not None:
            self.on_batch(len(rows))
        try:
            out = await loop.run_in_executor(self.executor, self.run_fn, rows)
            counts = {len(v) for v in out.values()}
            assert counts == {len(rows)}, f"batch of {len(rows)} rows gave outputs of {counts} rows"
            slices, start = [], 0
            for p in live:
                slices.append({name: np.asarray(v[start:start + len(p.rows)]) for name, v in out.items()})
                start += len(p.rows)
            assert start == len(rows)
        except Exception as e:       # the model failed on this batch: each of its requests gets the error
            for p in live:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        for p, result in zip(live, slices):
            if not p.future.done():      # it may have timed out meanwhile
                p.future.set_result(result)
