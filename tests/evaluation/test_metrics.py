import numpy as np
import pytest
from sklearn import metrics as skm

from polyfuse.evaluation.metrics import (UNSEEN, classification_metrics, expected_calibration_error,
                                         reliability_bins)

Y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
P = np.array([[.7, .2, .1], [.1, .6, .3], [.2, .2, .6], [.5, .1, .4], [.3, .3, .4], [.9, .05, .05],
              [.1, .1, .8], [.2, .5, .3]])


def test_classification_metrics_match_sklearn():
    m = classification_metrics(Y, P, ["a", "b", "c"])
    pred = P.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(Y, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(Y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(Y, pred).tolist()


def test_ece_on_a_hand_made_case():
    # Two bins used: confidence 0.9 (4 rows, 3 right: |0.75 - 0.9| = 0.15) and 0.6 (2 rows, 2 right:
    # |1.0 - 0.6| = 0.4). ECE = 4/6 * 0.15 + 2/6 * 0.4 = 0.2333...
    p = np.array([[.9, .1]] * 4 + [[.4, .6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(y, p) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
    bins = reliability_bins(y, p)
    assert [(b["n"], b["accuracy"]) for b in bins] == [(2, 1.0), (4, 0.75)]
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_unseen_label_counts_as_wrong():
    y = Y.copy()
    y[0] = UNSEEN                     # was right (argmax 0)
    m = classification_metrics(y, P, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, P.argmax(1)) - 1 / len(Y))
    assert m["n_unseen_label"] == 1
    assert m["roc_auc"] is not None
