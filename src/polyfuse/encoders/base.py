"""The one interface every encoder has, scratch or pretrained.

    forward(part) -> {"tokens": (B, T_m, D), "mask": (B, T_m) bool, True on real tokens}

`part` is one column's collated batch (data/processors.py): the processor's declared fields plus
`present` (B,), and `modality`. A row where the column is absent has an all-False mask: its tokens
never take part in attention. What callers may ask of an encoder beyond forward is declared here,
so nothing has to probe with hasattr/getattr.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..fusion.transformer import init_weights


class Encoder(nn.Module):
    #: A pretrained tower with every weight fixed: its outputs are features (cacheable, LiT-lockable).
    fully_frozen: bool = False

    def init_weights(self):
        """Fresh weights (LeCun linear, N(0, 0.02) embeddings); pretrained encoders keep theirs."""
        init_weights(self)

    @property
    def token_embedding(self) -> nn.Embedding | None:
        """The token embedding of Polyfuse's own text tokenizer (MLM ties its decoder to it), if any."""
        return None

    @property
    def feature_width(self) -> int | None:
        """Width of pooled_features (a pretrained tower's hidden size), None when there are none."""
        return None

    def pooled_features(self, part: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's own pooled representation before any trained projection: ((B, H), (B,) present)."""
        raise ConfigError(f"{type(self).__name__} has no pretrained features to pool (only pretrained towers do)")
