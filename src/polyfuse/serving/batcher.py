"""Dynamic batching: concurrent requests wait in one queue and run through the model together.

A batch closes when it holds `max_batch_size` rows or `max_wait_ms` after its first request
arrived, whichever comes first. The model runs in one worker thread, so the event loop keeps
accepting and answering requests while a batch computes; the next batch gathers meanwhile. Each
request's rows stay together and its outputs are sliced back by count.

With `prepare`, requests queue their raw rows and the worker thread decodes them, request by
request, just before the model call: one thread hop per batch instead of one per request (a
request whose rows fail to decode gets that error; the rest of the batch runs).
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
                 on_batch: Callable[[int], None] | None = None, prepare: Callable[[list], list] | None = None):
        self.run_fn, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.on_batch, self.prepare = on_batch, prepare
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
        live, failed, rows, out = await loop.run_in_executor(self.executor, self._work, live)
        for p, e in failed:
            if not p.future.done():
                p.future.set_exception(e)
        if not live:
            return
        try:
            if isinstance(out, Exception):
                raise out
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

    def _work(self, live: list[Pending]):
        """In the worker thread: decode each request's rows (when prepare is set), then one model call."""
        failed = []
        if self.prepare is not None:
            ok = []
            for p in live:
                try:
                    ok.append(Pending(self.prepare(p.rows), p.future, p.enqueued))
                except Exception as e:       # this request's input is bad: only it fails
                    failed.append((p, e))
            live = ok
        rows = [r for p in live for r in p.rows]
        if not rows:
            return live, failed, rows, {}
        if self.on_batch is not None:
            self.on_batch(len(rows))
        try:
            return live, failed, rows, self.run_fn(rows)
        except Exception as e:       # handed back, so the requests that failed to decode keep their own error
            return live, failed, rows, e
