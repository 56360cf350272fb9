import numpy as np
import pandas as pd
import pytest

import polyfuse
from polyfuse.errors import PolyfuseError
from polyfuse.retrieval.index import Index

# Four unit vectors in 2-d at 0, 90, 180 and 45 degrees; the query is at 10 degrees.
VECS = np.array([[1, 0], [0, 1], [-1, 0], [np.sqrt(0.5), np.sqrt(0.5)]], np.float32)
QUERY = np.array([np.cos(np.radians(10)), np.sin(np.radians(10))], np.float32)
ROWS = pd.DataFrame({"name": ["east", "north", "west", "north-east"], "group": ["a", "b", "a", "b"]})


def test_exact_search_returns_hand_computed_neighbours():
    index = polyfuse.Index.build(VECS, rows=ROWS, model_id="m1")
    hits = index.search(QUERY, k=3)
    # cos(10) = 0.985 (east), cos(35) = 0.819 (north-east), cos(80) = 0.174 (north)
    assert hits["name"].tolist() == ["east", "north-east", "north"]
    assert np.allclose(hits["_score"], np.cos(np.radians([10, 35, 80])), atol=1e-6)
    assert hits["_rank"].tolist() == [1, 2, 3] and hits["_id"].tolist() == ["0", "3", "1"]


def test_where_filters_on_row_columns():
    index = Index.build(VECS, rows=ROWS)
    hits = index.search(QUERY, k=10, where={"group": "b"})
    assert hits["name"].tolist() == ["north-east", "north"]
    with pytest.raises(PolyfuseError, match="cannot filter on 'colour'"):
        index.search(QUERY, where={"colour": "red"})
    with pytest.raises(PolyfuseError, match="no row of the index matches"):
        index.search(QUERY, where={"group": "zzz"})


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_same_results(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = Index.build(x, kind=kind, model_id="m1", ids=[f"r{i}" for i in range(400)])
    before = index.search_ids(x[:20], k=5)
    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx")
    after = again.search_ids(x[:20], k=5)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    assert again.meta["kind"] == kind and len(again) == 400 and again.rows["_id"][7] == "r7"
    assert (after[1][:, 0] == np.arange(20)).all()         # each vector finds itself first


def test_incremental_add(tmp_path):
    index = Index.build(VECS[:2], rows=ROWS[:2], model_id="m1")
    index.save(tmp_path / "idx")
    index = Index.load(tmp_path / "idx").add(VECS[2:], rows=ROWS[2:], model_id="m1")
    assert len(index) == 4 and index.rows["_id"].tolist() == ["0", "1", "2", "3"]
    assert index.search(QUERY, k=2)["name"].tolist() == ["east", "north-east"]


def test_mismatched_model_and_dimension_are_refused():
    index = Index.build(VECS, model_id="m1")
    with pytest.raises(PolyfuseError, match="built from model m1.*model m2"):
        index.search(QUERY, model_id="m2")
    with pytest.raises(PolyfuseError, match="2-dimensional vectors, got 3-dimensional"):
        index.search(np.ones(3, np.float32))
    with pytest.raises(PolyfuseError, match="built from model m1"):
        index.add(VECS, model_id="m2")


def test_empty_index_and_empty_query_are_clear_errors():
    with pytest.raises(PolyfuseError, match="no vectors to index"):
        Index.build(np.zeros((0, 8), np.float32))
    with pytest.raises(PolyfuseError, match="is empty: add vectors"):
        Index(8).search(np.ones(8, np.float32))
    with pytest.raises(PolyfuseError, match="empty query"):
        Index.build(VECS).search(np.zeros((0, 2), np.float32))


def test_approximate_indexes_agree_with_exact_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32))
    x = (centres[rng.integers(20, size=3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    _, exact = Index.build(x).search_ids(q, k=10)
    for kind in ("ivf", "hnsw"):
        _, approx = Index.build(x, kind=kind).search_ids(q, k=10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        assert recall >= 0.9, (kind, recall)


def test_ivf_needs_enough_vectors():
    with pytest.raises(PolyfuseError, match="use --kind flat"):
        Index.build(VECS, kind="ivf", nlist=16)
