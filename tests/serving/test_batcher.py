"""The dynamic batcher alone, with a fake model: batch sizes, waiting, matching outputs back, failures."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from polyfuse.serving.batcher import Batcher, BatchTimeout


def echo(seen: list):
    def run(rows):
        seen.append((len(rows), threading.current_thread().name))
        return {"y": np.array(rows, dtype=float) * 10}
    return run


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    seen = []

    async def main():
        b = Batcher(echo(seen), max_batch_size=8, max_wait_ms=50)
        b.start()
        reqs = [[i] if i % 3 else [i, i + 0.5] for i in range(20)]        # some requests carry two rows
        outs = await asyncio.gather(*(b.submit(r, 5.0) for r in reqs))
        await b.stop()
        return reqs, outs

    reqs, outs = asyncio.run(main())
    for r, o in zip(reqs, outs):
        np.testing.assert_array_equal(o["y"], np.array(r) * 10)
    assert all(n <= 8 for n, _ in seen) and sum(n for n, _ in seen) == 27
    assert len(seen) <= 5                                   # batched, not one call per request
    assert all(name.startswith("polyfuse-model") for _, name in seen)   # off the event loop


def test_a_lone_request_waits_at_most_max_wait():
    async def main():
        b = Batcher(echo([]), max_batch_size=32, max_wait_ms=30)
        b.start()
        t = time.perf_counter()
        await b.submit([1], 5.0)
        dt = time.perf_counter() - t
        await b.stop()
        return dt

    assert asyncio.run(main()) < 1.0


def test_event_loop_keeps_running_during_inference():
    ticks = []

    def slow(rows):
        time.sleep(0.3)
        return {"y": np.zeros(len(rows))}

    async def main():
        b = Batcher(slow, max_batch_size=4, max_wait_ms=0)
        b.start()
        task = asyncio.ensure_future(b.submit([1], 5.0))
        for _ in range(10):
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.02)
        await task
        await b.stop()

    asyncio.run(main())
    assert max(np.diff(ticks)) < 0.2


def test_timeout_and_model_errors_reach_only_their_requests():
    calls = []

    def flaky(rows):
        calls.append(list(rows))
        if "bad" in rows:
            raise RuntimeError("model failed")
        time.sleep(0.2 if "slow" in rows else 0)
        return {"y": np.zeros(len(rows))}

    async def main():
        b = Batcher(flaky, max_batch_size=1, max_wait_ms=0)
        b.start()
        with pytest.raises(BatchTimeout):
            await b.submit(["slow"], 0.05)
        with pytest.raises(RuntimeError):
            await b.submit(["bad"], 5.0)
        ok = await b.submit(["fine"], 5.0)
        await b.stop()
        return ok

    assert len(asyncio.run(main())["y"]) == 1


def test_a_model_returning_the_wrong_row_count_fails_its_requests_not_the_batcher():
    calls = []

    def short(rows):
        calls.append(len(rows))
        return {"y": np.zeros(len(rows) - 1 if len(calls) == 1 else len(rows))}

    async def main():
        b = Batcher(short, max_batch_size=4, max_wait_ms=0)
        b.start()
        with pytest.raises(AssertionError):
            await b.submit([1, 2], 5.0)
        ok = await b.submit([3], 5.0)                       # the batcher is still running
        await b.stop()
        return ok

    assert len(asyncio.run(main())["y"]) == 1


def test_prepare_decodes_in_the_model_thread_and_a_bad_request_fails_alone():
    seen, prepared = [], []

    def prepare(rows):
        prepared.append(threading.current_thread().name)
        if "bad" in rows:
            raise ValueError("cannot decode")
        return [r * 2 for r in rows]

    async def main():
        b = Batcher(echo(seen), max_batch_size=8, max_wait_ms=100, prepare=prepare)
        b.start()
        outs = await asyncio.gather(b.submit([1], 5.0), b.submit(["bad"], 5.0), b.submit([2, 3], 5.0),
                                    return_exceptions=True)
        await b.stop()
        return outs

    ok1, bad, ok2 = asyncio.run(main())
    np.testing.assert_array_equal(ok1["y"], [20])                # decoded (x2), then the model (x10)
    np.testing.assert_array_equal(ok2["y"], [40, 60])
    assert isinstance(bad, ValueError)
    assert seen == [(3, seen[0][1])]                               # one model call, without the bad request
    assert all(name.startswith("polyfuse-model") for name in prepared) and len(prepared) == 3
