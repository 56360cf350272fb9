"""Pictures of explain_row's attributions: PNG per row and column, and one self-contained HTML page."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np

from .explain import explain_row, to_input_shape
from .report import plots
from .report.page import CSS

METHODS = (("rollout", "attention rollout"), ("grad_x_input", "gradient × input"))
EXTRA_CSS = """
.tok{padding:1px 3px;margin:1px;border-radius:4px;display:inline-block}
.share{display:flex;height:16px;border-radius:8px;overflow:hidden;margin:4px 0 2px;max-width:480px}
.share span{display:block;height:100%}
.legend span{margin-right:12px;font-size:12px;color:#475569}
.pics img{max-width:100%}
"""
MOD_COLOR = {"text": "#4f46e5", "image": "#f59e0b", "audio": "#10b981"}


def normalise(a: np.ndarray, stretch: bool = False) -> np.ndarray:
    """|a| scaled to [0, 1] for display. stretch: min-max instead, for rollout, whose scores are all
    close to uniform (the residual keeps half of every token) and would otherwise show as one colour."""
    a = np.abs(a)
    lo = a[a > 0].min() if stretch and (a > 0).any() else 0.0
    span = a.max() - lo
    return np.clip((a - lo) / span, 0, 1) if span > 0 else np.zeros_like(a, dtype=float)


def explain_table(predictor, data, out: Path, table=None) -> list[dict]:
    """Explain every row of data; writes row<R>_<column>.png, attributions.json and index.html under out."""
    out.mkdir(parents=True, exist_ok=True)
    results, blocks = [], []
    for i in range(len(data)):
        r = explain_row(predictor, data, i)
        row = data.rows[i]
        maps, pics = {}, []
        for col, a in r["columns"].items():
            item = data.inputs[i][col]
            shaped = {k: to_input_shape(predictor, a["modality"], a[k], item) for k, _ in METHODS if a[k] is not None}
            maps[col] = {k: v.tolist() for k, v in shaped.items()}
            png = out / f"row{row}_{_safe(col)}.png"
            _save_png(png, _picture(predictor, a["modality"], item, shaped))
            pics.append((col, a["modality"], png.name, shaped, item))
        results.append({"row": int(row), "prediction": _name(predictor, r), "output": r["output"].tolist(),
                        "share": r["share"], "maps": maps})
        blocks.append(_row_html(predictor, row, r, pics))
    (out / "attributions.json").write_text(json.dumps(results))
    html = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Polyfuse explanations</title>'
            f'<style>{CSS}{EXTRA_CSS}</style></head><body><header><h1>Why the model predicted what it did</h1>'
            f'<div class="sub">{len(results)} row(s) · {predictor.cfg.model.fusion} fusion · attention rollout and '
            f'gradient × input on each encoder\'s tokens</div></header><main>{"".join(blocks)}</main></body></html>')
    (out / "index.html").write_text(html, encoding="utf-8")
    return results


def _name(predictor, r) -> str:
    if predictor.labels.task == "regression":
        return f"{float(r['output'][0]) * predictor.labels.std + predictor.labels.mean:.4g}"
    return predictor.labels.classes[r["target"]]


def _picture(predictor, modality, item, shaped) -> str | None:
    """A data URI of the column's picture (image and audio); text is shown as coloured HTML tokens."""
    if modality == "image":
        mean, std = np.array(predictor.cfg.image.mean), np.array(predictor.cfg.image.std)
        px = np.clip(item["pixels"].numpy().transpose(1, 2, 0) * std + mean, 0, 1)
        return plots.attribution_image(px, {label: normalise(shaped[k], k == "rollout") for k, label in METHODS if k in shaped})
    if modality == "audio":
        return plots.attribution_audio(item["mel"].numpy(),
                                       {label: normalise(shaped[k], k == "rollout") for k, label in METHODS if k in shaped})
    # Rollout is positive and near uniform: stretched like the heatmaps. Gradient x input keeps its sign.
    return plots.attribution_text(_tokens(predictor, item),
                                  {label: normalise(shaped[k], True) if k == "rollout" else shaped[k]
                                   for k, label in METHODS if k in shaped})


def _tokens(predictor, item) -> list[str]:
    tok = predictor.processors.text.tokenizer
    return [tok.id_to_token(int(t)) or "?" for t in item["ids"]]


def _save_png(path: Path, uri: str):
    import base64
    path.write_bytes(base64.b64decode(uri.split(",", 1)[1]))


def _row_html(predictor, row, r, pics) -> str:
    share = r["share"]["grad_x_input"]
    bar = "".join(f'<span style="width:{100 * v:.1f}%;background:{MOD_COLOR[m]}" title="{m} {v:.0%}"></span>'
                  for m, v in share.items())
    legend = "".join(f'<span>■ <b style="color:{MOD_COLOR[m]}">{m}</b> {v:.0%} (grad×input) · '
                     f'{r["share"]["rollout"].get(m, 0):.0%} (rollout)</span>' for m, v in share.items())
    body = []
    for col, modality, png, shaped, item in pics:
        if modality == "text":
            html = " ".join(_token_span(t, v) for t, v in zip(_tokens(predictor, item), normalise(shaped["grad_x_input"])))
            body.append(f'<h3>{escape(col)} (text, gradient × input)</h3><p>{html}</p>')
        body.append(f'<h3>{escape(col)} ({modality})</h3><figure class="pics"><img src="{png}" alt="{escape(col)}">'
                    f'</figure>' if modality != "text" else f'<figure class="pics"><img src="{png}" alt="{escape(col)}"></figure>')
    conf = "" if predictor.labels.task == "regression" else f" ({float(r['output'][r['target']]):.0%})"
    return (f'<section><h2>Row {row}: predicted <b>{escape(_name(predictor, r))}</b>{conf}</h2>'
            f'<div class="share">{bar}</div><div class="legend">{legend}</div>{"".join(body)}</section>')


def _token_span(token: str, v: float) -> str:
    return f'<span class="tok" style="background:rgba(220,38,38,{0.08 + 0.8 * v:.2f})">{escape(token)}</span>'


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))
