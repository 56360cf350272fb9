from __future__ import annotations

import torch
from torch import nn

from ..config import Config


class TextEncoder(nn.Module):
    """Token + learned position embeddings."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        D = cfg.model.d_model
        self.tok = nn.Embedding(vocab_size, D)
        self.pos = nn.Embedding(cfg.text.max_length, D)
        self.drop = nn.Dropout(cfg.model.dropout)

    def forward(self, part: dict) -> dict:
        ids, mask = part["ids"], part["mask"]                      # (B, T), (B, T)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)[None]                    # (B, T, D)
        return {"tokens": self.drop(x), "mask": mask}
