import numpy as np

from polyfuse.retrieval.metrics import rank_metrics, relevance, retrieval_metrics


def test_relevance_from_keys():
    rel = relevance([np.array([0, 1, 2], object), np.array(["a", "b", None], object)],
                    [np.array([0, 1, 2], object), np.array(["b", "b", None], object)])
    # query 1 matches target 1 (same row) and target 0 (same key 'b'); None never matches.
    assert rel.tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_rank_metrics_by_hand():
    rel = np.array([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], bool)
    ranked = np.array([[0, 1, 2, 3],        # correct at rank 1: AP 1
                       [0, 2, 1, 3],        # correct at 2 and 4: AP (1/2 + 2/4) / 2 = 0.5
                       [0, 1, -1, -1]])     # correct target never returned: rank inf, AP 0
    m = rank_metrics(ranked, rel)
    assert m["R@1"] == 1 / 3 and m["R@5"] == 2 / 3 and m["R@10"] == 2 / 3
    assert m["median_rank"] == 2.0
    assert np.isclose(m["mAP"], (1 + 0.5 + 0) / 3) and m["queries"] == 3


def test_slices_rank_each_group_against_all_targets():
    """Per-group metrics split the queries, never the targets: a query is still ranked among every target."""
    targets = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0, 0.9, 1, 0], [0, 0, 1, 0]], np.float32)   # query 1 (correct: 1) prefers 2
    rel = np.eye(3, 4, dtype=bool)
    out = retrieval_metrics(queries, targets, rel, kinds=("flat",), groups=np.array(["a", "b", None], object), by="g")
    assert set(out) == {"flat", "g=a", "g=b"}             # a query with no group is in no slice
    assert out["g=a"]["R@1"] == 1.0 and out["g=a"]["queries"] == 1
    assert out["g=b"]["R@1"] == 0.0 and out["g=b"]["median_rank"] == 2.0   # ranked 2nd of all 4 targets
    assert out["flat"]["R@1"] == 2 / 3
    # the slices come from exact search even when only an approximate kind is asked for
    assert retrieval_metrics(queries, targets, rel, kinds=("hnsw",), groups=np.array(["a", "b", "b"], object))["group=b"]["R@5"] == 1.0


def test_zero_shot_metrics_on_items_equal_to_their_prompts(run_dir, synth, tmp_path):
    """A caption equal to its row's label embeds exactly like that label's prompt: every row is right;
    with each caption swapped for the other label, every row is wrong."""
    import pandas as pd

    from polyfuse.retrieval import Embedder, zero_shot_metrics
    df = pd.read_csv(synth["test"])
    for col in ("image", "audio"):
        df[col] = [p if pd.isna(p) else str(synth["test"].parent / p) for p in df[col]]
    df["caption"] = df["shape"]
    df.to_csv(tmp_path / "same.csv", index=False)
    emb = Embedder.load(run_dir)
    m = zero_shot_metrics(emb, tmp_path / "same.csv", "text", "shape")
    assert m["accuracy"] == m["top3_accuracy"] == m["balanced_accuracy"] == 1.0
    assert m["classes"] == 2 and m["rows"] == len(df) and m["column"] == "caption"
    assert m["majority_rate"] == df["shape"].value_counts().iloc[0] / len(df)
    df["caption"] = df["shape"].map({"horizontal": "vertical", "vertical": "horizontal"})
    df.to_csv(tmp_path / "swapped.csv", index=False)
    m = zero_shot_metrics(emb, tmp_path / "swapped.csv", "text", "shape")
    assert m["accuracy"] == 0.0 and m["top3_accuracy"] == 1.0            # 2 classes: always in the top 3
