"""What every fusion returns: one dataclass, so the model and the objectives read one shape."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Fused:
    pooled: torch.Tensor                      # (B, D) the row's vector ([CLS], the MLP's output, or late's mean)
    per_column: dict[str, torch.Tensor]       # {column: (B, D)} the column's tokens pooled (masked mean)
    present: dict[str, torch.Tensor]          # {column: (B,) bool} rows that have the column
    # What the task head scores: (B, C, D) vectors whose logits are averaged with weights (B, C).
    # C = 1 (the pooled vector, weight 1) for attention and concat fusion; one per column for late
    # fusion, weighted by presence, so a row is scored from the columns it has.
    scored: torch.Tensor
    score_weights: torch.Tensor
    tokens: torch.Tensor | None = None        # (B, T, D) the fused sequence (attention fusion only)
    mask: torch.Tensor | None = None          # (B, T) real tokens of `tokens`
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)   # column -> its range in `tokens`


def single(pooled: torch.Tensor, per_column: dict, present: dict, **kw) -> Fused:
    """A fusion with one vector per row for the head (attention, concat)."""
    ones = torch.ones(pooled.shape[0], 1, dtype=pooled.dtype, device=pooled.device)
    return Fused(pooled, per_column, present, pooled[:, None], ones, **kw)
