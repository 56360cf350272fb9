"""Baseline: each column encoded and pooled on its own; the head scores each, logits are averaged
over the columns a row has (Fused.scored / score_weights)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .fused import Fused
from .transformer import Stack, masked_mean


class LateFusion(nn.Module):
    def __init__(self, cfg: Config, streams: list[tuple[str, str]]):
        super().__init__()
        D = cfg.model.d_model
        self.stacks = nn.ModuleDict({m: Stack(D, cfg.model.n_layers, cfg.model.n_heads, cfg.model.mlp_ratio,
                                              cfg.model.dropout) for m in dict.fromkeys(m for _, m in streams)})

    def forward(self, encoded: dict) -> Fused:
        pooled, present = {}, {}
        for col, e in encoded.items():
            # An absent row attends to its own (masked) tokens to avoid an all-masked softmax; its
            # output is discarded through `present`.
            h = self.stacks[e["modality"]](e["tokens"], e["mask"] | ~e["mask"].any(1, keepdim=True))
            pooled[col], present[col] = masked_mean(h, e["mask"]), e["mask"].any(1)
        w = torch.stack([present[c] for c in pooled], 1).to(next(iter(pooled.values())).dtype)   # (B, C)
        stacked = torch.stack(list(pooled.values()), 1)                                           # (B, C, D)
        mean = (stacked * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        return Fused(mean, pooled, present, scored=stacked, score_weights=w)
