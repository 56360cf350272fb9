"""Baseline: each column encoded and pooled on its own, pooled vectors concatenated, then an MLP."""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .fused import Fused, single
from .transformer import Stack, masked_mean


class ConcatFusion(nn.Module):
    def __init__(self, cfg: Config, streams: list[tuple[str, str]]):
        super().__init__()
        D = cfg.model.d_model
        self.columns = [c for c, _ in streams]
        self.stacks = nn.ModuleDict({m: Stack(D, cfg.model.n_layers, cfg.model.n_heads, cfg.model.mlp_ratio,
                                              cfg.model.dropout) for m in dict.fromkeys(m for _, m in streams)})
        # A fixed-width concatenation needs something in an absent column's slot: a learned vector
        # (never zeros, which the MLP could not tell from a real but quiet input).
        self.missing = nn.Parameter(torch.zeros(len(self.columns), D))
        self.mlp = nn.Sequential(nn.Linear(len(self.columns) * D, D), nn.GELU(), nn.Linear(D, D), nn.LayerNorm(D))

    def forward(self, encoded: dict) -> Fused:
        B = next(iter(encoded.values()))["tokens"].shape[0]
        pooled, present = {}, {}
        slots = []
        for i, col in enumerate(self.columns):
            e = encoded.get(col)
            if e is None:
                slots.append(self.missing[i].expand(B, -1))
                continue
            h = self.stacks[e["modality"]](e["tokens"], e["mask"] | ~e["mask"].any(1, keepdim=True))
            pooled[col], present[col] = masked_mean(h, e["mask"]), e["mask"].any(1)
            slots.append(torch.where(present[col][:, None], pooled[col], self.missing[i]))
        return single(self.mlp(torch.cat(slots, 1)), pooled, present)
