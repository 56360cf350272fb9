from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config


def conv_stem(c_in: int, d: int, stride: int) -> nn.Sequential:
    """log2(stride) stride-2 3x3 convolutions, widening to d. Small-data transformers learn far
    faster from a convolutional stem than from one linear map per patch (Xiao et al., 2021)."""
    layers, c = [], c_in
    steps = int(math.log2(stride))
    for i in range(steps):
        c_out = d if i == steps - 1 else max(16, d // 2 ** (steps - 1 - i))
        layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.GELU()]
        c = c_out
    layers.append(nn.Conv2d(c, d, 1))
    init_conv_stem(layers)
    return nn.Sequential(*layers)


def init_conv_stem(layers) -> None:
    """He init and zero biases. PyTorch's default conv init shrinks the signal ~3x per GELU layer,
    and its random biases are the same for every input: after 3 layers the per-image part of a
    token was ~0.006 against a constant ~0.07, LayerNorm saw a constant, and training sat at chance.
    He init keeps the per-input signal at unit scale; the last (linear) projection keeps variance."""
    convs = [m for m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    for i, conv in enumerate(convs):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu" if i < len(convs) - 1 else "linear")
        nn.init.zeros_(conv.bias)


class ImageEncoder(nn.Module):
    """Patch embedding + 2-D position (a row embedding plus a column embedding)."""

    def __init__(self, cfg: Config):
        super().__init__()
        D, p = cfg.model.d_model, cfg.image.patch
        self.grid = cfg.image.size // p
        self.batch_stats = cfg.image.stem == "cnn" and cfg.image.stem_norm == "batch"
        if cfg.image.stem == "conv":
            self.patch = conv_stem(3, D, p)
        elif cfg.image.stem == "cnn":
            from .cnn_stem import cnn_stem     # here, not at the top: cnn_stem imports this module
            self.patch = cnn_stem(3, D, p, cfg.image.stem_width, cfg.image.stem_blocks, cfg.image.stem_norm,
                                cfg.image.stem_downsample)
        else:
            self.patch = nn.Conv2d(3, D, kernel_size=p, stride=p)   # == a linear map of each flattened patch
        self.row = nn.Parameter(torch.zeros(self.grid, D))
        self.col = nn.Parameter(torch.zeros(self.grid, D))
        nn.init.normal_(self.row, std=0.02)
        nn.init.normal_(self.col, std=0.02)
        self.drop = nn.Dropout(cfg.model.dropout)

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
        mask = part["present"][:, None].expand(-1, x.shape[1])     # (B, G*G)
        return {"tokens": self.drop(x), "mask": mask}
