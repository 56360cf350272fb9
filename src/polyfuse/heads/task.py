"""Task heads: fused states -> logits, and the task's loss."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..fusion.fused import Fused


class TaskHead(nn.Module):
    def __init__(self, d: int, n_outputs: int, task: str, label_smoothing: float = 0.0):
        super().__init__()
        self.task, self.label_smoothing = task, label_smoothing
        self.fc = nn.Linear(d, n_outputs)

    def forward(self, fused: Fused) -> torch.Tensor:
        """The weighted mean of the logits of fused.scored: the pooled vector's for attention and
        concat fusion, the present columns' for late fusion."""
        logits = self.fc(fused.scored)                             # (B, C, K)
        w = fused.score_weights.to(logits.dtype)[..., None]        # (B, C, 1)
        return (logits * w).sum(1) / w.sum(1).clamp_min(1.0)       # (B, K)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        """smooth=False: the plain negative log-likelihood, without label smoothing (for fitting
        weights on held-out rows, where smoothing would reward doubt)."""
        logits = logits.float()
        if self.task == "classification":
            return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if smooth else 0.0)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.mse_loss(logits.squeeze(-1), y)                   # y is standardised

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return logits.float().softmax(-1)
        if self.task == "multilabel":
            return logits.float().sigmoid()
        return logits.float()
