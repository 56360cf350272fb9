"""The decode cache and the lazy rows read from it: the same tensors as decoding, content-keyed,
parallel, and a resumed build ends where an unbroken one does."""
import dataclasses
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polyfuse.data.cache import FILE_NAME, DecodeCache
from polyfuse.data.dataset import RowInputs, encode_table, make_collate, take
from polyfuse.data.loader import BatchStream
from polyfuse.data.manifest import read_table, resolve_schema
from polyfuse.data.processors import Processors
from polyfuse.errors import InputError
from polyfuse.training.trainer import epoch_batches
from tests.conftest import tiny_config


@pytest.fixture
def folder(synth, tmp_path):
    """A copy of the synthetic training table and its files, safe to change."""
    src = synth["train"].parent
    for sub in ("images", "audio"):
        shutil.copytree(src / sub, tmp_path / sub)
    pd.read_csv(synth["train"])[:48].to_csv(tmp_path / "t.csv", index=False)
    return tmp_path


def _processors(folder, **data):
    cfg = tiny_config(data={"cache_dir": str(folder / "cache"), **data})
    table = read_table(folder / "t.csv")
    schema = resolve_schema(table, cfg.schema)
    cfg = dataclasses.replace(cfg, schema=schema)
    return table, Processors.build(cfg, schema).fit(table)


def _same_rows(a, b):
    assert a.rows == b.rows
    _same_items(a.inputs, b.inputs)


def _same_items(xs, ys):
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for col in x:
            assert (x[col] is None) == (y[col] is None), col
            if x[col] is not None:
                for k in x[col]:
                    assert torch.equal(x[col][k], y[col][k]), (col, k)


def _items(cache_dir):
    with sqlite3.connect(cache_dir / FILE_NAME) as db:
        return dict(db.execute("SELECT key, value FROM items"))


def test_a_cache_hit_equals_a_fresh_decode(folder):
    table, procs = _processors(folder)
    fresh = encode_table(table, _processors(folder, cache=False)[1], progress=False)
    cold = encode_table(table, procs, progress=False)       # decodes and stores
    n_items = DecodeCache(folder / "cache").info()["items"]
    warm = encode_table(table, procs, progress=False)       # reads back
    assert isinstance(warm.inputs, RowInputs) and n_items > 0
    assert DecodeCache(folder / "cache").info()["items"] == n_items     # nothing decoded the second time
    _same_rows(fresh, cold)
    _same_rows(fresh, warm)
    key = warm.inputs.keys[0, 1].tobytes()      # the first image
    stored = DecodeCache(folder / "cache").get_many([key, bytes(len(key))])
    assert list(stored) == [key]                # a key never stored is left out
    assert stored[key]["pixels"].dtype == np.uint8 and stored[key]["pixels"].shape == (16, 16, 3)
    # A batch read in one query (what collate does) is the rows read one by one.
    batch = [3, 0, 5, 3]
    _same_items(take(warm.inputs, batch), [fresh.inputs[i] for i in batch])


def test_a_changed_file_is_a_miss(folder):
    table, procs = _processors(folder)
    before = encode_table(table, procs, progress=False)
    path = table.resolve(table.df.at[0, "image"])
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path)      # new content at the same path
    after = encode_table(table, procs, progress=False)
    red = procs.by_modality["image"](path)["pixels"]
    assert torch.equal(after.inputs[0]["image"]["pixels"], red)
    assert not torch.equal(before.inputs[0]["image"]["pixels"], red)     # the old entry is still there, under its key
    assert not np.array_equal(before.inputs.keys[0], after.inputs.keys[0])


def test_two_workers_read_the_same_rows_and_batches_as_none(folder):
    table, procs = _processors(folder)
    serial = encode_table(table, _processors(folder, workers=0, cache_dir=str(folder / "c0"))[1], progress=False)
    parallel = encode_table(table, _processors(folder, workers=2, cache_dir=str(folder / "c2"))[1], progress=False)
    _same_rows(serial, parallel)
    assert _items(folder / "c0") == _items(folder / "c2")
    collate = make_collate(procs)
    batches = epoch_batches(len(serial), 8, seed=0, epoch=1, rank=0, world=1)
    made = list(BatchStream(lambda idx: collate(idx, parallel), workers=2)(batches))
    assert len(made) == len(batches)
    for idx, got in zip(batches, made):
        want = collate(idx, serial)
        assert torch.equal(got["label"], want["label"]) if "label" in want else True
        for col, part in want["inputs"].items():
            for k, v in part.items():
                assert (torch.equal(got["inputs"][col][k], v) if torch.is_tensor(v) else got["inputs"][col][k] == v)


def test_a_bad_file_found_by_a_worker_is_skipped_and_listed(folder):
    df = pd.read_csv(folder / "t.csv")
    bad = folder / "images" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    df.loc[37, "image"] = "images/broken.png"
    df.loc[5, "audio"] = "audio/missing.wav"
    df.to_csv(folder / "t.csv", index=False)
    table, procs = _processors(folder, workers=2)
    got = encode_table(table, procs, on_bad_row="skip", progress=False)
    assert [(s["row"], s["column"]) for s in got.skipped] == [(5, "audio"), (37, "image")]
    assert got.skipped[1]["file"].endswith("broken.png") and "not a supported image" in got.skipped[1]["reason"]
    assert len(got) == len(df) - 2 and 5 not in got.rows and 37 not in got.rows
    with pytest.raises(InputError, match=r"row 5, column 'audio', file '.*missing.wav'"):
        encode_table(table, procs, on_bad_row="error", progress=False)


def test_an_interrupted_build_resumes_to_the_same_cache(folder):
    """A build killed (os._exit, as kill -9) inside its third transaction, then run again, ends with
    the same entries as an unbroken build."""
    table, procs = _processors(folder, cache_dir=str(folder / "whole"))
    encode_table(table, procs, progress=False)
    script = textwrap.dedent(f"""
        import dataclasses, os
        from polyfuse.data import cache, dataset
        dataset.SCAN_ROWS = 8                      # several transactions on 48 rows
        from tests.data.test_cache import _processors
        from pathlib import Path
        calls = []
        real = cache.DecodeCache.write
        def dying(self, items, files):
            calls.append(1)
            if len(calls) == 3:                    # mid-transaction: begun, rows inserted, never committed
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT OR IGNORE INTO items VALUES (?, ?, ?)", [(k, p, b"x") for k, p, _ in items])
                os._exit(137)
            real(self, items, files)
        cache.DecodeCache.write = dying
        table, procs = _processors(Path({str(folder)!r}), cache_dir={str(folder / "broken")!r})
        dataset.encode_table(table, procs, progress=False)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 137, done.stderr
    partial = _items(folder / "broken")
    whole = _items(folder / "whole")
    assert 0 < len(partial) < len(whole) and b"x" not in partial.values()
    table, procs = _processors(folder, cache_dir=str(folder / "broken"))
    resumed = encode_table(table, procs, progress=False)
    assert _items(folder / "broken") == whole
    _same_rows(resumed, encode_table(table, _processors(folder, cache_dir=str(folder / "whole"))[1], progress=False))


def test_cache_cli_builds_reports_and_clears(folder, capsys):
    from polyfuse.cli.main import main
    cache = folder / "cli-cache"
    assert main(["cache", "build", str(folder / "t.csv"), "--cache-dir", str(cache), "--workers", "0"]) == 0
    assert "48 rows in the cache" in capsys.readouterr().out
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "image " in out and "audio " in out and "text " in out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert DecodeCache(cache).info()["items"] == 0
