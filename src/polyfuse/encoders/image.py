from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..fusion.dropout import Dropout
from .base import Encoder
from .cnn_stem import cnn_stem, conv_stem


class ImageEncoder(Encoder):
    """Patch embedding + 2-D position (a row embedding plus a column embedding)."""

    def __init__(self, cfg: Config):
        super().__init__()
        D, p = cfg.model.d_model, cfg.image.patch
        self.grid = cfg.image.size // p
        self.batch_stats = cfg.image.stem == "cnn" and cfg.image.stem_norm == "batch"
        if cfg.image.stem == "conv":
            self.patch = conv_stem(3, D, p)
        elif cfg.image.stem == "cnn":
            self.patch = cnn_stem(3, D, p, cfg.image.stem_width, cfg.image.stem_blocks, cfg.image.stem_norm,
                                cfg.image.stem_downsample)
        else:
            self.patch = nn.Conv2d(3, D, kernel_size=p, stride=p)   # == a linear map of each flattened patch
        self.row = nn.Parameter(torch.zeros(self.grid, D))
        self.col = nn.Parameter(torch.zeros(self.grid, D))
        nn.init.normal_(self.row, std=0.02)
        nn.init.normal_(self.col, std=0.02)
        self.drop = Dropout(cfg.model.dropout)

    def forward(self, part: dict) -> dict:
        present = part["present"]
        if self.batch_stats and self.training and not bool(present.all()):
            # BatchNorm in training: only real images may shape the batch statistics. Absent rows
            # get zero tokens (masked out downstream). In eval, running statistics make every row
            # independent of the batch, so export and serving run the plain path below.
            pix = part["pixels"]
            x = pix.new_zeros(len(pix), self.row.shape[1], self.grid, self.grid)   # (B, D, G, G)
            if bool(present.any()):
                x[present] = self.patch(pix[present]).to(x.dtype)
        else:
            x = self.patch(part["pixels"])                         # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2)                           # (B, G*G, D)
        pos = (self.row[:, None, :] + self.col[None, :, :]).reshape(-1, x.shape[-1])
        x = x + pos[None]
        mask = present[:, None].expand(-1, x.shape[1])              # (B, G*G)
        return {"tokens": self.drop(x), "mask": mask}
