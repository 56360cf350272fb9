"""Matplotlib figures for the report, each returned as an inline `data:image/png;base64,...` URI."""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")      # no display: the report is written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

ACCENT, MUTED, GOOD, BAD = "#4f46e5", "#94a3b8", "#059669", "#dc2626"
PALETTE = ["#4f46e5", "#f59e0b", "#10b981", "#ec4899", "#0ea5e9", "#8b5cf6", "#ef4444", "#84cc16"]
plt.rcParams.update({
    "font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#cbd5e1",
    "axes.grid": True, "grid.color": "#eef2f7", "grid.linewidth": 0.8, "axes.axisbelow": True,
    "axes.titleweight": "bold", "axes.titlesize": 10, "legend.frameon": False, "figure.dpi": 110,
})


def to_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def confusion(cm: list[list[int]], classes: list[str]) -> str:
    cm = np.asarray(cm, dtype=float)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(min(1.2 + 0.45 * k, 8), min(1.0 + 0.45 * k, 7.5)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)          # row-normalised: recall per class
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(k), classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "#1e293b")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return to_uri(fig)


def roc_pr(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> str:
    """One-vs-rest ROC and precision-recall curves per class (binary: the positive class only)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    ks = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    for i, k in enumerate(ks):
        pos = y == k
        if pos.all() or not pos.any():
            continue
        color = PALETTE[i % len(PALETTE)]
        fpr, tpr, _ = skm.roc_curve(pos, proba[:, k])
        a.plot(fpr, tpr, color=color, lw=1.4, label=f"{classes[k]} ({skm.auc(fpr, tpr):.2f})")
        prec, rec, _ = skm.precision_recall_curve(pos, proba[:, k])
        b.plot(rec, prec, color=color, lw=1.4,
               label=f"{classes[k]} ({skm.average_precision_score(pos, proba[:, k]):.2f})")
    a.plot([0, 1], [0, 1], ls="--", color=MUTED, lw=1)
    a.set(title="ROC (AUC)", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    b.set(title="Precision–recall (AP)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (a, b):
        ax.legend(fontsize=7, loc="lower right" if ax is a else "lower left", ncol=2 if len(ks) > 6 else 1)
    fig.tight_layout()
    return to_uri(fig)


def reliability(bins: list[dict], ece: float) -> str:
    fig, (a, b) = plt.subplots(2, 1, figsize=(4.2, 4.2), height_ratios=[3, 1], sharex=True)
    a.plot([0, 1], [0, 1], ls="--", color=MUTED, lw=1, label="perfect calibration")
    centers = [(x["lo"] + x["hi"]) / 2 for x in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    a.bar(centers, [x["accuracy"] for x in bins], width=width * 0.9, color=ACCENT, alpha=0.85, label="accuracy")
    a.plot([x["confidence"] for x in bins], [x["accuracy"] for x in bins], "o", color="#f59e0b", ms=4,
           label="mean confidence")
    a.set(title=f"Reliability (ECE {ece:.3f})", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    a.legend(fontsize=7, loc="upper left")
    b.bar(centers, [x["n"] for x in bins], width=width * 0.9, color=MUTED)
    b.set(xlabel="confidence", ylabel="rows")
    fig.tight_layout()
    return to_uri(fig)


def training(log: list[dict]) -> str | None:
    if not log:
        return None
    ep = [r["epoch"] for r in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    a.plot(ep, [r["train_loss"] for r in log], "-o", ms=3, color=ACCENT, label="train")
    if any("val_loss" in r for r in log):
        a.plot(ep, [r.get("val_loss") for r in log], "-o", ms=3, color="#f59e0b", label="validation")
    a.set(title="Loss", xlabel="epoch")
    a.legend()
    keys = sorted({k for r in log for k in r if k.startswith("val_") and k != "val_loss"})
    for i, k in enumerate(keys):
        b.plot(ep, [r.get(k) for r in log], "-o", ms=3, color=PALETTE[i % len(PALETTE)], label=k[4:])
    b.set(title="Validation metrics", xlabel="epoch")
    if keys:
        b.legend()
    fig.tight_layout()
    return to_uri(fig)


def bars(names: list[str], values: list[float], title: str, highlight: str | None = None,
         xlabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(5.6, 0.5 + 0.34 * len(names)))
    colors = [ACCENT if n == highlight else "#a5b4fc" for n in names]
    vals = [np.nan if v is None else v for v in values]
    ax.barh(range(len(names)), vals, color=colors)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        if not np.isnan(v):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set(title=title, xlabel=xlabel)
    real = [v for v in vals if not np.isnan(v)] + [0.0]
    lo, hi = min(real), max(real)          # negative values (an r2 below 0) extend the axis leftwards
    pad = 0.18 * ((hi - lo) or 1.0)
    ax.set_xlim(lo - pad if lo < 0 else 0, hi + pad)
    ax.grid(axis="y", visible=False)
    return to_uri(fig)


def robustness(curves: dict) -> str:
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    mods = [m for m in curves if m != "metric"]
    for i, m in enumerate(mods):
        c = curves[m]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(c["strengths"], c["values"], "-o", ms=4, color=color, label=f"{m} ({c['kind']})")
        if c.get("removed") is not None:
            ax.plot([1.12], [c["removed"]], marker="X", ms=8, color=color, ls="none")
    ax.axvline(1.06, color="#e2e8f0", lw=1)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0, 1.12], ["0", "0.25", "0.5", "0.75", "1", "removed"])
    ax.set(title=f"Robustness: {curves['metric']} as one modality degrades", xlabel="corruption strength",
           ylabel=curves["metric"])
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_uri(fig)


def spectrogram(mel: np.ndarray, frames: np.ndarray | None = None, height: float = 1.3) -> str:
    """A log-mel spectrogram (n_mels, F); `frames` (F,) in [0, 1] draws a heat strip above it."""
    rows = 2 if frames is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(3.2, height + 0.3 * (rows - 1)), squeeze=False,
                             height_ratios=[1, 5] if rows == 2 else [1])
    if frames is not None:
        axes[0, 0].imshow(frames[None], aspect="auto", cmap="magma", vmin=0, vmax=1)
    axes[-1, 0].imshow(mel, aspect="auto", origin="lower", cmap="viridis")
    for ax in axes[:, 0]:
        ax.set_axis_off()
    fig.subplots_adjust(hspace=0.05)
    return to_uri(fig)


def image_thumb(pixels: np.ndarray, heat: np.ndarray | None = None, size: float = 1.4) -> str:
    """pixels (H, W, 3) in [0, 1]; heat (H, W) in [0, 1] overlaid when given."""
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(pixels, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_axis_off()
    return to_uri(fig)


def attribution_image(pixels: np.ndarray, heats: dict) -> str:
    """The image, then one heatmap overlay per method; heats {title: (H, W) in [0, 1]}."""
    fig, axes = plt.subplots(1, 1 + len(heats), figsize=(2.3 * (1 + len(heats)), 2.5))
    axes[0].imshow(pixels, interpolation="nearest")
    axes[0].set_title("input")
    for ax, (title, heat) in zip(axes[1:], heats.items()):
        ax.imshow(pixels, interpolation="nearest")
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return to_uri(fig)


def attribution_audio(mel: np.ndarray, frames: dict) -> str:
    """The spectrogram with one heat strip per method above it; frames {title: (F,) in [0, 1]}."""
    n = len(frames)
    fig, axes = plt.subplots(n + 1, 1, figsize=(6.4, 2.0 + 0.45 * n), height_ratios=[1] * n + [4], sharex=True)
    for ax, (title, f) in zip(axes, frames.items()):
        ax.imshow(f[None], aspect="auto", cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([0], [title], fontsize=8)
        ax.set_xticks([])
        ax.grid(False)
    axes[-1].imshow(mel, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    axes[-1].set(xlabel="frame", ylabel="mel bin")
    axes[-1].grid(False)
    fig.tight_layout()
    return to_uri(fig)


def attribution_text(tokens: list[str], scores: dict) -> str:
    """Tokens as coloured boxes, one line per method; scores {title: (T,)} signed (red +, blue -)."""
    fig, ax = plt.subplots(figsize=(7.0, 0.35 + 0.45 * len(scores)))
    ax.set_axis_off()
    for line, (title, s) in enumerate(scores.items()):
        m = np.abs(s).max() or 1.0
        y = 1 - (line + 0.5) / len(scores)
        ax.text(0, y, title, fontsize=8, color="#475569", va="center", transform=ax.transAxes)
        x = 0.2
        for tok, v in zip(tokens, s):
            color = (0.86, 0.15, 0.15, 0.1 + 0.8 * v / m) if v >= 0 else (0.15, 0.39, 0.92, 0.1 + 0.8 * -v / m)
            t = ax.text(x, y, tok, fontsize=9, va="center", transform=ax.transAxes,
                        bbox=dict(boxstyle="round,pad=0.25", fc=color, ec="none"))
            fig.canvas.draw()
            x += t.get_bbox_patch().get_window_extent().width / ax.get_window_extent().width + 0.01
    return to_uri(fig)
