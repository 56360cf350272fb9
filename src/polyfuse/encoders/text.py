from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..data.word2vec import InitVectors
from ..fusion.dropout import Dropout
from ..fusion.transformer import init_weights
from .base import Encoder


class TextEncoder(Encoder):
    """Token + learned position embeddings."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        D = cfg.model.d_model
        self.tok = nn.Embedding(vocab_size, D)
        self.pos = nn.Embedding(cfg.text.max_length, D)
        self.drop = Dropout(cfg.model.dropout)

    def forward(self, part: dict) -> dict:
        ids, mask = part["ids"], part["mask"]                      # (B, T), (B, T)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)[None]                    # (B, T, D)
        return {"tokens": self.drop(x), "mask": mask}

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.tok


class Word2VecTextEncoder(TextEncoder):
    """The scratch text encoder whose token embeddings start from word2vec vectors (data/word2vec.py)."""

    def __init__(self, cfg: Config, vocab_size: int, vectors: InitVectors | None):
        super().__init__(cfg, vocab_size)
        self.vectors = vectors           # None when reloading a run: the trained weights follow

    def init_weights(self):
        init_weights(self)
        if self.vectors is not None:
            found = self.vectors.found
            self.tok.weight.data[found] = self.vectors.vectors[found].to(self.tok.weight.dtype)
            self.vectors = None          # only needed once; do not keep a second copy
