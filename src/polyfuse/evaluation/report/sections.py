"""The report's sections: each returns an HTML fragment (or "" when it does not apply)."""
from __future__ import annotations

from html import escape

import numpy as np

from ..metrics import reliability_bins
from . import plots

LABELS = {"accuracy": "Accuracy", "macro_f1": "Macro F1", "roc_auc": "ROC AUC", "ece": "Calibration error (ECE)",
          "subset_accuracy": "Subset accuracy", "micro_f1": "Micro F1", "mae": "MAE", "rmse": "RMSE", "r2": "R²",
          "macro_precision": "Macro precision", "macro_recall": "Macro recall", "n": "Rows",
          "cider": "CIDEr", "bleu4": "BLEU-4", "rouge_l": "ROUGE-L", "exact_match": "Exact match", "wer": "WER",
          "cer": "CER"}
SHORT = {**LABELS, "ece": "ECE", "macro_precision": "Macro prec.", "macro_recall": "Macro rec."}   # table headers
HEADLINE_KEYS = {"classification": ["accuracy", "macro_f1", "roc_auc", "ece"],
                 "multilabel": ["subset_accuracy", "micro_f1", "macro_f1", "roc_auc"],
                 "regression": ["mae", "rmse", "r2"],
                 "generation": ["cider", "bleu4", "rouge_l", "exact_match", "wer", "cer"]}
TABLE_KEYS = {"classification": ["accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc", "ece"],
              "multilabel": ["subset_accuracy", "micro_f1", "macro_f1", "roc_auc"],
              "regression": ["mae", "rmse", "r2"]}


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return f"{v:.3f}"


def section(id_: str, title: str, body: str, note: str = "") -> str:
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{id_}"><h2>{escape(title)}</h2>{note}{body}</section>'


def figure(uri: str | None, alt: str, cls: str = "") -> str:
    return f'<figure class="{cls}"><img src="{uri}" alt="{escape(alt)}"></figure>' if uri else ""


def table(header: list[str], rows: list[list[str]], highlight: int | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f'<tr{" class=hl" if i == highlight else ""}>' + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def headline(result: dict, task: str) -> str:
    cards = "".join(f'<div class="card"><div class="value">{fmt(result.get(k))}</div>'
                    f'<div class="label">{LABELS[k]}</div></div>' for k in HEADLINE_KEYS[task])
    cards += f'<div class="card muted"><div class="value">{fmt(result["n"])}</div><div class="label">Rows</div></div>'
    return f'<div class="cards">{cards}</div>'


def classification_plots(result: dict, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> str:
    seen = y >= 0
    bins = reliability_bins(y, proba)
    grid = figure(plots.confusion(result["confusion_matrix"], classes), "confusion matrix") + \
        figure(plots.reliability(bins, result["ece"]), "reliability diagram")
    out = section("confusion", "Confusion matrix and calibration", f'<div class="grid2">{grid}</div>',
                  "Rows are true classes, coloured by the share of each true class predicted as each column. "
                  "The reliability diagram bins rows by the model's confidence: bars below the diagonal "
                  "mean over-confidence.")
    if len(np.unique(y[seen])) > 1:
        out += section("curves", "ROC and precision–recall", figure(plots.roc_pr(y[seen], proba[seen], classes),
                                                                      "ROC and PR curves", "wide"),
                       "One-vs-rest per class; the legend gives each class's AUC / average precision.")
    return out


def training_curves(log: list[dict]) -> str:
    uri = plots.training(log)
    if uri is None:
        return section("training", "Training", '<p class="note">No log.jsonl in the run folder.</p>')
    last = log[-1]
    note = f"{len(log)} epoch(s), {fmt(last.get('elapsed_s'))} s, {fmt(last.get('samples_per_s'))} samples/s last epoch."
    return section("training", "Training and validation curves", figure(uri, "training curves", "wide"), note)


def ablation(result: dict, task: str, metric: str) -> str:
    abl = result.get("modality_ablation")
    if not abl:
        return ""
    keys = TABLE_KEYS[task]
    rows = [["all inputs"] + [fmt(result.get(k)) for k in keys]]
    rows += [[escape(name.replace("_", " "))] + [fmt(m.get(k)) for k in keys] for name, m in abl.items()]
    names = ["all inputs"] + [n.replace("_", " ") for n in abl]
    vals = [result[metric]] + [m.get(metric) for m in abl.values()]
    chart = figure(plots.bars(names, vals, f"{LABELS.get(metric, metric)} by inputs used", "all inputs"),
                   "modality ablation chart")
    body = f'<div class="grid2">{table([""] + [SHORT.get(k, k) for k in keys], rows, 0)}{chart}</div>'
    return section("ablation", "Modality ablation", body,
                   "<em>without m</em> empties every column of modality m, exactly as a row without it.")


def robustness(curves: dict | None) -> str:
    if not curves:
        return ""
    mods = [m for m in curves if m != "metric"]
    header = ["modality", "corruption"] + [f"{s:g}" for s in curves[mods[0]]["strengths"]] + ["removed"]
    rows = [[m, curves[m]["kind"]] + [fmt(v) for v in curves[m]["values"]] + [fmt(curves[m]["removed"])]
            for m in mods]
    body = f'<div class="grid2">{figure(plots.robustness(curves), "robustness curves")}' \
           f'{table(header, rows)}</div>'
    return section("robustness", "Robustness", body,
                   "Gaussian noise on image and audio tensors (strength = noise std / signal std); token "
                   "dropout on text (strength = chance of dropping each token). ✕ marks the modality removed.")


def groups(sl: dict | None, task: str) -> str:
    if not sl:
        return ""
    keys = ["n"] + TABLE_KEYS[task]
    rows = [[escape(g)] + [fmt(m.get(k)) for k in keys] for g, m in sl["groups"].items()]
    gap = sl.get("largest_gap")
    callout = ""
    if gap:
        callout = (f'<div class="callout">Largest gap in {LABELS.get(gap["metric"], gap["metric"])}: '
                   f'<b>{gap["gap"]:.3f}</b>, between <b>{escape(gap["best"])}</b> (best) and '
                   f'<b>{escape(gap["worst"])}</b> (worst).</div>')
    names = list(sl["groups"])
    chart = figure(plots.bars(names, [sl["groups"][g].get(sl["metric"]) for g in names],
                              f'{LABELS.get(sl["metric"], sl["metric"])} by {sl["column"]}'), "group chart")
    body = callout + f'<div class="grid2">{table([sl["column"]] + [SHORT.get(k, k) for k in keys], rows)}{chart}</div>'
    return section("groups", f"Slices by '{sl['column']}'", body, "An empty group cell is its own group, (missing).")


def examples(cards: list[dict], unseen: list[dict]) -> str:
    if not cards and not unseen:
        return ""
    html = []
    for c in cards:
        media = "".join(f'<img class="thumb" src="{u}" alt="image">' for u in c.get("images", []))
        media += "".join(f'<img class="spec" src="{u}" alt="spectrogram">' for u in c.get("audio", []))
        texts = "".join(f'<p class="text">“{escape(t)}”</p>' for t in c.get("texts", []))
        html.append(f'<div class="example"><div class="media">{media}</div><div class="meta">'
                    f'<div class="row">row {c["row"]}</div><div>true <b>{escape(c["true"])}</b></div>'
                    f'<div>predicted <b class="bad">{escape(c["pred"])}</b></div>'
                    f'<div class="conf"><span style="width:{100 * c["confidence"]:.0f}%"></span></div>'
                    f'<div class="small">{c["confidence"]:.1%} confident</div>{texts}</div></div>')
    body = f'<div class="examples">{"".join(html)}</div>'
    if unseen:
        rows = [[str(u["row"]), escape(u["label"])] for u in unseen[:50]]
        body += (f'<h3>{len(unseen)} row(s) with a label never seen in training (scored as wrong)</h3>'
                 + table(["row", "label"], rows))
    return section("wrong", "Most confidently wrong", body, "The wrong predictions the model was surest of, with their inputs.")
