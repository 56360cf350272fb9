from __future__ import annotations

import math

from torch import nn
from torch.nn import functional as F

from ..config import Config
from ..fusion.dropout import Dropout
from .base import Encoder
from .cnn_stem import init_conv_stem


class AudioEncoder(Encoder):
    """Log-mel frames grouped `frames_per_token` at a time, projected to D, plus learned positions.

    stem 'linear': one projection of each k stacked frames. stem 'conv': log2(k) stride-2 1-D
    convolutions; padded frames are zeroed after every layer so that a row's last token sees the
    same zeros whether the batch pads it or not (batch composition never changes a prediction).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        D, k, n_mels = cfg.model.d_model, cfg.audio.frames_per_token, cfg.audio.n_mels
        self.k = k
        if cfg.audio.stem == "conv":
            chans = [n_mels] + [D] * int(math.log2(k))
            self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
            self.out = nn.Conv1d(chans[-1], D, 1)
            init_conv_stem([*self.convs, self.out])     # default init loses the signal (see cnn_stem.py)
        else:
            self.convs = nn.ModuleList()
            self.out = nn.Conv1d(n_mels, D, kernel_size=k, stride=k)  # == linear over k stacked frames
        self.pos = nn.Embedding(cfg.audio.max_frames // k, D)
        self.drop = Dropout(cfg.model.dropout)

    def forward(self, part: dict) -> dict:
        x, m = part["mel"], part["mask"]                           # (B, n_mels, F), (B, F)
        for conv in self.convs:
            m = m[:, ::2]
            x = F.gelu(conv(x)) * m[:, None, :]
        x = self.out(x).transpose(1, 2)                            # (B, F/k, D)
        # A token is real when its first frame is: rows are padded to whole tokens by the processor.
        mask = part["mask"][:, :: self.k]
        n = min(x.shape[1], mask.shape[1], self.pos.num_embeddings)
        x = x[:, :n] + self.pos.weight[:n][None]
        return {"tokens": self.drop(x), "mask": mask[:, :n]}
