"""Evaluate a trained model on a labelled table: task metrics plus modality ablation."""
from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import EncodedSet
from ..inference import Predictor
from .metrics import classification_metrics, multilabel_metrics, regression_metrics


def task_metrics(predictor: Predictor, data: EncodedSet, outputs: np.ndarray) -> dict:
    labels = predictor.labels
    y = torch.stack(data.labels).numpy()
    if labels.task == "classification":
        return classification_metrics(y, outputs, labels.classes)
    if labels.task == "multilabel":
        return multilabel_metrics(y.astype(int), outputs, labels.classes)
    return regression_metrics(y * labels.std + labels.mean, outputs)


def evaluate(predictor: Predictor, data: EncodedSet, ablation: bool = True, batch_size: int = 64) -> dict:
    """{"<metric>": ..., "modality_ablation": {"without_image": {...}, "only_audio": {...}}}.

    `without_m` removes every column of modality m, as if its cells were empty; with three or more
    modalities `only_m` keeps just one (with two, only_a is without_b and is not repeated).
    """
    result = task_metrics(predictor, data, predictor.outputs(data, batch_size=batch_size))
    mods = predictor.schema.modalities()
    if ablation and len(mods) > 1:
        abl = {}
        for m in mods:
            abl[f"without_{m}"] = _compact(task_metrics(predictor, data, predictor.outputs(data, drop=(m,),
                                                                                           batch_size=batch_size)))
        if len(mods) > 2:
            for m in mods:
                others = tuple(o for o in mods if o != m)
                abl[f"only_{m}"] = _compact(task_metrics(predictor, data, predictor.outputs(data, drop=others,
                                                                                             batch_size=batch_size)))
        result["modality_ablation"] = abl
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


def _compact(m: dict) -> dict:
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
