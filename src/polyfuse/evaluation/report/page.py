"""Assemble report.html: one self-contained file (inline CSS, images as base64 PNG, no scripts)."""
from __future__ import annotations

import datetime
from html import escape
from pathlib import Path

import numpy as np

from ...data.manifest import is_missing
from ...runfolder import RunFolder
from ..metrics import HEADLINE
from . import plots, sections

CSS = """
:root{--ink:#0f172a;--soft:#475569;--line:#e2e8f0;--bg:#f8fafc;--accent:#4f46e5;--bad:#dc2626}
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);background:var(--bg)}
header{background:linear-gradient(120deg,#312e81,#4f46e5 60%,#7c3aed);color:#fff;padding:28px 40px 24px}
header h1{margin:0 0 4px;font-size:26px;letter-spacing:-.01em}
header .sub{opacity:.85;font-size:14px}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px;display:flex;gap:18px;flex-wrap:wrap}
nav a{color:var(--soft);text-decoration:none;font-size:13px;font-weight:600}
nav a:hover{color:var(--accent)}
main{max-width:1180px;margin:0 auto;padding:20px 40px 60px}
section{background:#fff;border:1px solid var(--line);border-radius:14px;padding:20px 24px;margin:18px 0;box-shadow:0 1px 2px rgba(15,23,42,.04)}
h2{margin:0 0 6px;font-size:18px}
h3{font-size:15px;margin:18px 0 8px}
.note{color:var(--soft);margin:0 0 12px;font-size:13.5px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:14px}
.card{background:#eef2ff;border-radius:12px;padding:14px 16px}
.card.muted{background:#f1f5f9}
.card .value{font-size:28px;font-weight:700;color:#3730a3;font-variant-numeric:tabular-nums}
.card.muted .value{color:#334155}
.card .label{font-size:12.5px;color:var(--soft);text-transform:uppercase;letter-spacing:.04em}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px;align-items:start}
figure{margin:0;text-align:center}
figure img{max-width:100%;height:auto}
figure.wide img{width:100%;max-width:900px}
table{border-collapse:collapse;width:100%;font-size:13.5px;font-variant-numeric:tabular-nums}
th{text-align:left;color:var(--soft);font-weight:600;border-bottom:2px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:6px 8px}
td:first-child{white-space:nowrap}
th{font-size:12.5px}
tr.hl td{font-weight:700;background:#f5f3ff}
.callout{background:#fff7ed;border:1px solid #fed7aa;border-radius:10px;padding:10px 14px;margin-bottom:14px}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.example{display:flex;gap:12px;border:1px solid var(--line);border-radius:12px;padding:12px}
.media{display:flex;flex-direction:column;gap:6px;align-items:center;flex:0 0 auto}
.thumb{width:84px;height:84px;image-rendering:pixelated;border-radius:6px;border:1px solid var(--line)}
.spec{width:150px;border-radius:4px}
.meta{font-size:13.5px;min-width:0}
.meta .row{color:var(--soft);font-size:12px}
.bad{color:var(--bad)}
.conf{height:6px;background:#f1f5f9;border-radius:3px;margin:6px 0 2px;overflow:hidden}
.conf span{display:block;height:100%;background:var(--bad)}
.small{font-size:12px;color:var(--soft)}
.text{margin:6px 0 0;font-style:italic;color:#334155;overflow-wrap:anywhere}
footer{color:var(--soft);font-size:12px;text-align:center;padding:10px}
"""
N_EXAMPLES = 8


def write_report(path: Path, predictor, run_dir: Path, labelled, outputs: np.ndarray, result: dict,
                 curves: dict | None = None, slices: dict | None = None) -> Path:
    task = predictor.labels.task
    metric = HEADLINE[task]
    cfg = predictor.cfg
    parts = [sections.section("headline", "Headline", sections.headline(result, task))]
    if task == "classification":
        parts.append(sections.classification_plots(result, labelled.y, outputs, predictor.labels.classes))
    parts.append(sections.training_curves(read_log(run_dir)))
    parts.append(sections.ablation(result, task, metric))
    parts.append(sections.robustness(curves))
    parts.append(sections.groups(slices, task))
    parts.append(sections.examples(wrong_examples(predictor, labelled, outputs), labelled.unseen))
    nav = [("headline", "Headline"), ("confusion", "Confusion"), ("curves", "ROC / PR"), ("training", "Training"),
           ("ablation", "Ablation"), ("robustness", "Robustness"), ("groups", "Slices"), ("wrong", "Errors")]
    sub = (f"{escape(str(result.get('data', '')))} · {result['n']:,} rows · {task} · {cfg.model.fusion} fusion · "
           f"d={cfg.model.d_model}, {cfg.model.n_layers} layers · {datetime.datetime.now():%Y-%m-%d %H:%M}")
    path.write_text(page(run_dir, sub, parts, nav), encoding="utf-8")
    return path


def page(run_dir: Path, sub: str, parts: list[str], nav: list[tuple[str, str]]) -> str:
    """The whole self-contained page around the sections; nav lists only the sections present."""
    body = "".join(parts)
    links = "".join(f'<a href="#{i}">{t}</a>' for i, t in nav if f'id="{i}"' in body)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>Polyfuse report · {escape(run_dir.name)}</title><style>{CSS}</style></head><body>'
            f'<header><h1>Evaluation report · {escape(run_dir.name)}</h1><div class="sub">{sub}</div></header>'
            f'<nav>{links}</nav><main>{body}</main>'
            f'<footer>Written by polyfuse evaluate --report</footer></body></html>')


def read_log(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).log()


def wrong_examples(predictor, labelled, outputs: np.ndarray, n: int = N_EXAMPLES) -> list[dict]:
    """The n wrong rows with the highest confidence (classification) or largest error (regression)."""
    labels, y = predictor.labels, labelled.y
    if labels.task == "classification":
        pred, conf = outputs.argmax(1), outputs.max(1)
        order = [i for i in np.argsort(-conf) if pred[i] != y[i]][:n]
        name = lambda k: labels.classes[k] if k >= 0 else "(unseen)"   # noqa: E731
        true = [labelled.table.df.at[labelled.data.rows[i], predictor.schema.label] for i in order]
        info = [(str(t), name(pred[i]), float(conf[i])) for i, t in zip(order, true)]
    elif labels.task == "multilabel":
        err = np.abs(outputs - y).max(1)
        order = [i for i in np.argsort(-err) if ((outputs[i] >= 0.5) != (y[i] > 0.5)).any()][:n]
        info = [(labels.decode(y[i:i + 1] )[0] or "(none)", labels.decode(outputs[i:i + 1])[0] or "(none)",
                 float(err[i])) for i in order]
    else:
        err = np.abs(outputs.reshape(-1) - y)
        order = list(np.argsort(-err)[:n])
        info = [(f"{y[i]:.3g}", f"{outputs[i, 0]:.3g}", min(1.0, float(err[i] / (np.abs(y).max() + 1e-9))))
                for i in order]
    return [dict(row=labelled.data.rows[i], true=t, pred=p, confidence=c, **inputs_of(predictor.cfg, labelled.table, labelled.data, i))
            for i, (t, p, c) in zip(order, info)]


def inputs_of(cfg, table, data, i: int) -> dict:
    """Thumbnails of what the model read for encoded row i: image tensors, spectrograms, raw text."""
    out = {"images": [], "audio": [], "texts": []}
    item, row = data.inputs[i], data.rows[i]
    mean, std = np.array(cfg.image.mean), np.array(cfg.image.std)
    for col, m in cfg.schema.streams():
        if item.get(col) is None:
            continue
        if m == "image":
            px = item[col]["pixels"].numpy().transpose(1, 2, 0) * std + mean
            out["images"].append(plots.image_thumb(np.clip(px, 0, 1)))
        elif m == "audio":
            out["audio"].append(plots.spectrogram(item[col]["mel"].numpy()))
        else:
            value = table.df.at[row, col]
            out["texts"].append("" if is_missing(value) else str(value))
    return out
