"""One table of several run folders: fusion, size, data, metrics, train time."""
from __future__ import annotations

from pathlib import Path

from ..runfolder import RunFolder
from .metrics import HEADLINE

METRICS = {"classification": ["accuracy", "macro_f1", "roc_auc", "ece"],
           "multilabel": ["subset_accuracy", "micro_f1", "macro_f1", "roc_auc"],
           "regression": ["mae", "rmse", "r2"]}


def run_row(run_dir: str | Path) -> dict:
    folder = RunFolder(run_dir)
    meta = folder.meta()
    trained, log, metrics = meta.info, folder.log(), folder.metrics()
    task = meta.config.schema.task or "classification"
    m = meta.config.model
    row = {"run": folder.path.name, "fusion": m.fusion, "size": m.size or f"d{m.d_model}",
           "d_model": m.d_model, "layers": m.n_layers, "params": trained.get("n_parameters"),
           "train_rows": trained.get("train_rows"), "epochs": len(log), "best_epoch": trained.get("epoch"),
           "train_s": log[-1].get("elapsed_s") if log else None,
           "eval_data": Path(metrics["data"]).name if "data" in metrics else metrics.get("split", "-")}
    for k in METRICS[task]:
        row[k] = metrics.get(k)
    for name, v in metrics.get("modality_ablation", {}).items():
        row[name] = v.get(HEADLINE[task])
    return row


def compare_runs(runs: list) -> list[dict]:
    return [run_row(r) for r in runs]


def format_rows(rows: list[dict], markdown: bool = False) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width))]
    return "\n".join(lines + ["  ".join(x.ljust(w) for x, w in zip(r, width)) for r in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int) and v >= 10000:
        return f"{v:,}"
    return str(v)
