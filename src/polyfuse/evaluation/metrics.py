"""Task metrics, all from scikit-learn. Inputs are numpy arrays; outputs are plain JSON-able dicts."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


UNSEEN = -1    # the class index of a label never seen in training: no prediction can match it


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """y: (N,) class indices, UNSEEN for a label never seen in training (always wrong); proba: (N, K)."""
    pred = proba.argmax(1)
    labels = list(range(len(classes)))
    seen = y != UNSEEN
    out = {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "macro_precision": float(skm.precision_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "macro_recall": float(skm.recall_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "roc_auc": roc_auc(y[seen], proba[seen]),
        "ece": expected_calibration_error(y, proba),
        "n_unseen_label": int((~seen).sum()),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "classes": classes,
    }
    return out


def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Top-label calibration: rows binned by confidence (max probability) into n_bins equal-width
    bins of (0, 1]; per non-empty bin its mean confidence, accuracy and row count."""
    conf, correct = proba.max(1), (proba.argmax(1) == y)
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int(sel.sum()),
                        "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    return out


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over bins of (rows in bin / N) * |accuracy - mean confidence| (scikit-learn has none)."""
    bins = reliability_bins(y, proba, n_bins)
    return float(sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / max(1, len(y)))


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Binary: AUC of the positive class. Multi-class: one-vs-rest macro over the classes present
    in y (a class with no positive example has no defined AUC). None when only one class is present."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    return float(np.mean([skm.roc_auc_score(y == k, proba[:, k]) for k in present]))


def multilabel_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    pred = (proba >= 0.5).astype(int)
    aucs = [skm.roc_auc_score(y[:, k], proba[:, k]) for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    return {
        "n": int(len(y)),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "macro_precision": float(skm.precision_score(y, pred, average="macro", zero_division=0)),
        "macro_recall": float(skm.recall_score(y, pred, average="macro", zero_division=0)),
        "roc_auc": float(np.mean(aucs)) if aucs else None,
        "classes": classes,
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    pred = pred.reshape(-1)
    return {
        "n": int(len(y)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else None,
    }


HEADLINE = {"classification": "accuracy", "multilabel": "micro_f1", "regression": "r2"}
