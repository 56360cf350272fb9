import numpy as np

from polyfuse.retrieval.metrics import rank_metrics, relevance


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
