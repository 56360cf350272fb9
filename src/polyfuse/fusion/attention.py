"""Single-stream fusion: every modality's tokens, tagged with a modality embedding, in one Transformer."""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .fused import Fused, single
from .transformer import Stack, masked_mean


class AttentionFusion(nn.Module):
    def __init__(self, cfg: Config, streams: list[tuple[str, str]]):
        super().__init__()
        D = cfg.model.d_model
        self.cls = nn.Parameter(torch.zeros(1, 1, D))
        # e_m = W_m + x: one learned vector per modality, added to every token of that modality.
        self.modality = nn.ParameterDict({m: nn.Parameter(torch.randn(D) * 0.02)
                                          for m in dict.fromkeys(m for _, m in streams)})
        # Two columns of one modality (say two captions) share W_m; this tells them apart.
        cols = [c for c, _ in streams]
        self.column = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(D)) for i in range(len(cols))})
        self.column_index = {c: str(i) for i, c in enumerate(cols)}
        self.stack = Stack(D, cfg.model.n_layers, cfg.model.n_heads, cfg.model.mlp_ratio, cfg.model.dropout)

    def forward(self, encoded: dict) -> Fused:
        """encoded: {column: {"tokens": (B, T_c, D), "mask": (B, T_c), "modality": m}} (absent columns left out)."""
        parts = list(encoded.items())
        B = parts[0][1]["tokens"].shape[0]
        xs, masks, spans, t = [self.cls.expand(B, -1, -1)], [], {}, 1
        masks.append(torch.ones(B, 1, dtype=torch.bool, device=self.cls.device))
        for col, e in parts:
            xs.append(e["tokens"] + self.modality[e["modality"]] + self.column[self.column_index[col]])
            masks.append(e["mask"])
            spans[col] = (t, t + e["tokens"].shape[1])
            t = spans[col][1]
        x, mask = torch.cat(xs, 1), torch.cat(masks, 1)            # (B, T, D), (B, T)
        h = self.stack(x, mask)
        per_column = {c: masked_mean(h[:, a:b], encoded[c]["mask"]) for c, (a, b) in spans.items()}
        present = {c: encoded[c]["mask"].any(1) for c in spans}
        return single(h[:, 0], per_column, present, tokens=h, mask=mask, spans=spans)
