"""Evaluate a trained model on a labelled table: task metrics plus modality ablation."""
from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import EncodedSet
from ..data.labels import LabelCodec
from ..inference import Predictor
from .metrics import HEADLINE, classification_metrics, multilabel_metrics, regression_metrics


def task_metrics(predictor: Predictor, data: EncodedSet, outputs: np.ndarray) -> dict:
    return metrics_for(predictor.labels, encoded_labels(predictor.labels, data), outputs)


def headline(predictor: Predictor, data: EncodedSet) -> float:
    """The task's headline metric (accuracy, micro-F1, R^2) of the predictions for a labelled set."""
    return task_metrics(predictor, data, predictor.predict(data).outputs)[HEADLINE[predictor.labels.task]]


def encoded_labels(labels: LabelCodec, data: EncodedSet) -> np.ndarray:
    """The labels of an EncodedSet in the form metrics_for takes: label units, as the predictions are."""
    y = torch.stack(list(data.labels)).numpy()
    return labels.to_units(y)[:, 0] if labels.task == "regression" else y


def metrics_for(labels, y: np.ndarray, outputs: np.ndarray) -> dict:
    if labels.task == "classification":
        return classification_metrics(y, outputs, labels.classes)
    if labels.task == "multilabel":
        return multilabel_metrics(y.astype(int), outputs, labels.classes)
    return regression_metrics(y, outputs)


def evaluate(predictor: Predictor, data: EncodedSet, ablation: bool = True, batch_size: int = 64,
             y: np.ndarray | None = None, outputs: np.ndarray | None = None) -> dict:
    """{"<metric>": ..., "modality_ablation": {"without_image": {...}, "only_audio": {...}}}.

    `without_m` removes every column of modality m, as if its cells were empty; with three or more
    modalities `only_m` keeps just one (with two, only_a is without_b and is not repeated).
    """
    y = encoded_labels(predictor.labels, data) if y is None else y
    outputs = predictor.predict(data, batch_size=batch_size).outputs if outputs is None else outputs
    result = metrics_for(predictor.labels, y, outputs)
    mods = predictor.schema.modalities()
    if ablation and len(mods) > 1:
        abl = {}

        def without(drop):
            return compact(metrics_for(predictor.labels, y, predictor.predict(data, drop, batch_size).outputs))
        for m in mods:
            abl[f"without_{m}"] = without((m,))
        if len(mods) > 2:
            for m in mods:
                abl[f"only_{m}"] = without(tuple(o for o in mods if o != m))
        result["modality_ablation"] = abl
        # What each modality adds: the headline metric with every modality, less the metric without it.
        name = HEADLINE[predictor.labels.task]
        if result.get(name) is not None:
            result["modality_contribution"] = {
                m: None if abl[f"without_{m}"].get(name) is None else round(result[name] - abl[f"without_{m}"][name], 6)
                for m in mods}
    return result


def single_modality_scores(result: dict, mods: list[str], metric: str) -> dict:
    """{'fused': x, 'image': y, ...}: each modality alone, read from the ablation table."""
    abl = result.get("modality_ablation", {})
    out = {"fused": result[metric]}
    for m in mods:
        if f"only_{m}" in abl:
            out[m] = abl[f"only_{m}"][metric]
        elif len(mods) == 2:
            other = next(o for o in mods if o != m)
            out[m] = abl[f"without_{other}"][metric]
    return out


def compact(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("confusion_matrix", "classes")}


def format_table(result: dict, task: str) -> str:
    keys = {"classification": ["accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc"],
            "multilabel": ["subset_accuracy", "micro_f1", "macro_f1", "roc_auc"],
            "regression": ["mae", "rmse", "r2"]}[task]
    rows = [("all inputs", result)] + list(result.get("modality_ablation", {}).items())
    width = max(len(r[0]) for r in rows) + 2
    lines = ["".ljust(width) + "".join(k.rjust(16) for k in keys)]
    for name, m in rows:
        lines.append(name.ljust(width) + "".join(_fmt(m.get(k)).rjust(16) for k in keys))
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
