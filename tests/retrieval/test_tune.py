"""Approximate indexes with settings from the data: planned from the size, tuned to a recall target,
and a reported recall that a brute-force recomputation confirms."""
import json

import numpy as np
import pytest

from polyfuse.retrieval import RetrievalConfig
from polyfuse.retrieval.index import Index
from polyfuse.retrieval.tune import plan, recall_at_k


def clustered(n, dim=16, clusters=30, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = (centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_plan_follows_the_collection():
    cfg = RetrievalConfig()
    small, mid, large = plan(cfg, 10_000, 64), plan(cfg, 100_000, 64), plan(cfg, 1_000_000, 64)
    assert small.kind == "flat" and large.kind == "ivf"                 # exact below exact_below vectors
    assert (mid.nlist, large.nlist) == (1265, 4000)                     # 4 sqrt(n)
    assert plan(cfg, 2000, 64).nlist == 2000 // 39                      # >= 39 training points per cell
    assert large.nprobe < large.nlist
    assert plan(cfg.merged(kind="hnsw"), 10_000, 64).hnsw_m < plan(cfg.merged(kind="hnsw"), 10_000, 256).hnsw_m
    mine = plan(cfg.merged(kind="ivf", nlist=7, nprobe=3), 1_000_000, 64)  # what the user set wins
    assert (mine.kind, mine.nlist, mine.nprobe) == ("ivf", 7, 3)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tuned_index_finds_the_exact_neighbours(kind):
    both = clustered(4100)
    x, q = both[:4000], both[4000:]                                     # q: fresh queries, same mixture
    index = Index(16, kind=kind, recall_queries=200).add(x)
    report = index.tune(x)
    assert not report["exact"] and report["tuned"] and report["queries"] == 200 and report["k"] == 10
    assert report["recall"] >= 0.95
    got = index.search_ids(q, 10)[1]
    assert recall_at_k(got, brute_top(x, q, 10), np.full(len(q), -2), 10) >= 0.95


def test_reported_recall_is_a_recomputation():
    x = clustered(3000)
    index = Index(16, kind="ivf", nprobe=1, recall_queries=150).add(x)   # a fixed, low nprobe: recall < 1
    report = index.tune(x)
    assert not report["tuned"] and index.meta["nprobe"] == 1
    held = np.array(report["held_out"])
    exact, approx = brute_top(x, x[held], 11), index.search_ids(x[held], 11)[1]
    hits = [len(set(a[(a != p) & (a >= 0)][:10]) & set(e[e != p][:10])) for a, e, p in zip(approx, exact, held)]
    assert report["recall"] == pytest.approx(np.mean(hits) / 10, abs=1e-4)
    assert report["recall"] < 1.0                                        # the test can see a miss


def test_tuning_raises_the_knob_only_as_far_as_needed():
    x = clustered(3000)
    loose, strict = (Index(16, kind="ivf", target_recall=t, recall_queries=150).add(x) for t in (0.5, 0.999))
    loose.tune(x), strict.tune(x)
    assert loose.meta["nprobe"] < strict.meta["nprobe"]
    assert loose.meta["recall"]["recall"] <= strict.meta["recall"]["recall"]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_save_load_keeps_search_settings_and_recall(tmp_path, kind):
    x = clustered(2000)
    index = Index(16, kind=kind, recall_queries=100).add(x)
    index.tune(x)
    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx")
    for key in ("kind", "nlist", "nprobe", "hnsw_m", "ef_search", "search_tuned", "recall"):
        assert again.meta[key] == index.meta[key], key
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["recall"]["recall"] == index.meta["recall"]["recall"]
    q = x[::40] + 0.05 * clustered(50, seed=2)
    assert np.array_equal(index.search_ids(q, 10)[1], again.search_ids(q, 10)[1])
    again.set_search(nprobe=1, ef_search=16).save(tmp_path / "idx2")     # a hand-set knob survives too
    assert (Index.load(tmp_path / "idx2").meta["nprobe"], Index.load(tmp_path / "idx2").meta["ef_search"]) == (1, 16)


def test_auto_kind_is_exact_on_small_collections():
    x = clustered(500)
    index = Index.build(x)
    assert index.meta["kind"] == "flat" and index.tune(x)["exact"]
    assert Index.build(x, exact_below=100).meta["kind"] == "ivf"
