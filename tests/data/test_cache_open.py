"""Several processes opening one fresh decode cache at once (DataLoader workers do) all succeed."""
import multiprocessing as mp
import sqlite3

import pytest

from polyfuse.data.cache import DecodeCache, _retry_locked


def _open(folder, barrier, results):
    barrier.wait()
    try:
        DecodeCache(folder).db.execute("SELECT count(*) FROM files").fetchone()
        results.put("ok")
    except Exception as e:          # reported to the test, not lost in the child
        results.put(repr(e))


def test_workers_opening_a_fresh_cache_together_all_get_it(tmp_path):
    ctx = mp.get_context("fork")
    for attempt in range(10):      # the race hit 2 of 60 opens before the retry
        folder = tmp_path / f"cache{attempt}"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(folder, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        assert got == ["ok"] * 6


def test_locked_is_retried_and_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"
    assert _retry_locked(flaky) == "done" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _retry_locked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such table: x")))
