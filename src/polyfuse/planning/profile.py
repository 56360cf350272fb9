"""Profile a table from a sample of its rows: what the plan (plan.py) chooses settings from.

Cheap by design: image sizes and audio lengths come from file headers (Pillow's lazy open,
soundfile's info); only a few dozen images are decoded, small, for pixel statistics. Unreadable
files are counted and skipped here: the training recipe reports them with file, row and column.
"""
from __future__ import annotations

import numpy as np
import soundfile as sf
from PIL import Image

from ..config import SchemaConfig
from ..data.manifest import Table, is_missing
from .split import group_candidates

SAMPLE_ROWS = 256          # files opened per column
PIXEL_SAMPLE = 48          # images decoded per column for channel statistics
TEXT_ROWS = 5000           # texts read per column (no file to open: cheap)


def profile_table(table: Table, schema: SchemaConfig, seed: int = 0) -> dict:
    """{"rows", "label": {...}, "columns": {column: {"modality", ...}}}, the same for the same table and seed."""
    rng = np.random.default_rng(seed)
    columns = {}
    for col, modality in schema.streams():
        values = [v for v in table.df[col] if not is_missing(v)]
        n = TEXT_ROWS if modality == "text" else SAMPLE_ROWS
        picked = [values[i] for i in sorted(rng.permutation(len(values))[:n])] if values else []
        info = {"modality": modality, "present": len(values) / max(1, len(table)),
                "distinct": len(set(map(str, values)))}
        if modality == "image":
            info.update(_images(table, picked))
        elif modality == "audio":
            info.update(_audio(table, picked))
        else:
            info.update(_text(picked))
        columns[col] = info
    return {"rows": len(table), "label": _label(table, schema), "columns": columns,
            "group_candidates": group_candidates(table, schema)}


def _label(table: Table, schema: SchemaConfig) -> dict:
    if schema.label is None or schema.label not in table.df.columns:
        return {}
    y = table.df[schema.label].dropna()
    out = {"task": schema.task}
    if schema.task == "classification":
        counts = y.astype(str).value_counts()
        out.update(classes=len(counts), smallest=int(counts.min()), largest=int(counts.max()))
    return out


def _images(table: Table, values: list) -> dict:
    sides, aspects, modes, bad = [], [], {}, 0
    pixels = []
    for i, v in enumerate(values):
        try:
            with Image.open(table.resolve(v)) as img:
                w, h = img.size
                modes[img.mode] = modes.get(img.mode, 0) + 1
                if i < PIXEL_SAMPLE:
                    small = img.convert("RGB").resize((16, 16), Image.BILINEAR)
                    pixels.append(np.asarray(small, dtype=np.float32).reshape(-1, 3) / 255.0)
        except Exception:   # noqa: BLE001 - any unreadable file: the recipe names it later
            bad += 1
            continue
        sides.append(min(w, h))
        aspects.append(max(w, h) / min(w, h))
    if not sides:
        return {"readable": 0, "unreadable": bad}
    px = np.concatenate(pixels) if pixels else np.full((1, 3), 0.5)
    grey = sum(n for m, n in modes.items() if m in ("L", "1", "I", "I;16", "F", "LA"))
    return {"readable": len(sides), "unreadable": bad,
            "short_side": {"median": float(np.median(sides)), "min": int(min(sides)), "max": int(max(sides))},
            "aspect": {"median": float(np.median(aspects)), "p90": float(np.percentile(aspects, 90))},
            "greyscale": grey / len(sides),
            "mean": [round(float(x), 4) for x in px.mean(0)],
            "std": [round(float(x), 4) for x in px.std(0)]}


def _audio(table: Table, values: list) -> dict:
    rates, seconds, channels, bad = [], [], [], 0
    for v in values:
        try:
            info = sf.info(str(table.resolve(v)))
        except Exception:   # noqa: BLE001
            bad += 1
            continue
        if info.samplerate <= 0 or info.frames <= 0:
            bad += 1
            continue
        rates.append(info.samplerate)
        seconds.append(info.frames / info.samplerate)
        channels.append(info.channels)
    if not rates:
        return {"readable": 0, "unreadable": bad}
    vals, counts = np.unique(rates, return_counts=True)
    return {"readable": len(rates), "unreadable": bad,
            "sample_rate": {"most_common": int(vals[counts.argmax()]), "min": int(min(rates)),
                            "p10": int(np.percentile(rates, 10, method="lower")), "max": int(max(rates))},
            "seconds": {"median": float(np.median(seconds)), "p95": float(np.percentile(seconds, 95)),
                        "max": float(max(seconds))},
            "channels": int(max(channels))}


def _text(values: list) -> dict:
    words = [str(v).split() for v in values]
    if not words:
        return {"readable": 0}
    lengths = [len(w) for w in words]
    return {"readable": len(words),
            "words": {"median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
                      "max": int(max(lengths))},
            "vocabulary_in_sample": len({t.lower() for w in words for t in w})}
