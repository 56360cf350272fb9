"""Robustness curves: the headline metric as each modality is corrupted at increasing strength.

Corruption acts on the encoded tensors the model reads, so it means the same for every data set:
  - image and audio: Gaussian noise of std `strength` x the modality's own std over the set
    (strength 1 = noise as large as the signal);
  - text: each token dropped with chance `strength`, a caption left with none is absent
    (strength 1 drops every token: the same as removing text).
Strength "removed" is the modality ablation: every cell of the modality empty.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import EncodedSet
from ..inference import Predictor
from .evaluate import metrics_for
from .metrics import HEADLINE

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TENSOR = {"image": "pixels", "audio": "mel", "text": "ids"}


def corrupt(data: EncodedSet, streams: list[tuple[str, str]], modality: str, strength: float,
            seed: int = 0) -> EncodedSet:
    """A copy of data with every column of `modality` corrupted; the other columns are shared, not copied."""
    g = torch.Generator().manual_seed(seed)
    cols = [c for c, m in streams if m == modality]
    key = TENSOR[modality]
    scale = {c: _std([r[c][key] for r in data.inputs if r.get(c) is not None]) for c in cols}
    rows = []
    for item in data.inputs:
        new = dict(item)
        for c in cols:
            if item.get(c) is None:
                continue
            x = item[c][key]
            if modality == "text":
                keep = torch.rand(x.shape, generator=g) >= strength
                new[c] = {**item[c], key: x[keep]} if keep.any() else None
            else:
                new[c] = {**item[c], key: x + torch.randn(x.shape, generator=g) * strength * scale[c]}
        if all(v is None for v in new.values()):
            new = item    # a row needs some input; dropout that removed everything leaves it as it was
        rows.append(new)
    return EncodedSet(rows, data.labels, data.rows)


def _std(xs: list[torch.Tensor]) -> float:
    if not xs:
        return 0.0
    return float(torch.cat([x.float().flatten() for x in xs]).std())


def robustness_curves(predictor: Predictor, data: EncodedSet, y: np.ndarray, result: dict,
                      strengths=STRENGTHS, batch_size: int = 64) -> dict:
    """{modality: {"strengths": [...], "metric": [...], "removed": x}} for the headline metric."""
    name = HEADLINE[predictor.labels.task]
    streams = predictor.schema.streams()
    abl = result.get("modality_ablation", {})
    out = {"metric": name}
    for m in predictor.schema.modalities():
        values = []
        for s in strengths:
            if s == 0:
                values.append(result[name])
                continue
            outputs = predictor.predict(corrupt(data, streams, m, s), batch_size=batch_size).outputs
            values.append(metrics_for(predictor.labels, y, outputs)[name])
        removed = abl.get(f"without_{m}", {}).get(name)
        out[m] = {"strengths": list(strengths), "values": values, "removed": removed,
                  "kind": "token dropout" if m == "text" else "gaussian noise"}
    return out
