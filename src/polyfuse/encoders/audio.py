from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import Config
from ..fusion.dropout import Dropout
from .base import Encoder
from .cnn_stem import init_conv_stem


class AudioEncoder(Encoder):
    """Log-mel frames grouped `frames_per_token` at a time, projected to D, plus learned positions.

    stem 'linear': one projection of each k stacked frames. stem 'conv': log2(k) stride-2 1-D
    convolutions over time, the mel bands as channels. stem 'cnn': a 2-D CNN over (mel band, frame)
    (SpectrogramCNN below). Padded frames are zeroed after every layer so that a row's last token
    sees the same zeros whether the batch pads it or not (batch composition never changes a prediction).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        D, k, n_mels = cfg.model.d_model, cfg.audio.frames_per_token, cfg.audio.n_mels
        self.k = k
        self.cnn = SpectrogramCNN(n_mels, D, k, cfg.audio.stem_width) if cfg.audio.stem == "cnn" else None
        if cfg.audio.stem == "conv":
            chans = [n_mels] + [D] * int(math.log2(k))
            self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
            self.out = nn.Conv1d(chans[-1], D, 1)
            init_conv_stem([*self.convs, self.out])     # default init loses the signal (see cnn_stem.py)
        elif cfg.audio.stem == "linear":
            self.convs = nn.ModuleList()
            self.out = nn.Conv1d(n_mels, D, kernel_size=k, stride=k)  # == linear over k stacked frames
        self.pos = nn.Embedding(cfg.audio.max_frames // k, D)
        self.drop = Dropout(cfg.model.dropout)

    def forward(self, part: dict) -> dict:
        x, m = part["mel"], part["mask"]                           # (B, n_mels, F), (B, F)
        if self.cnn is not None:
            x = self.cnn(x, m)                                     # (B, D, F/k)
        else:
            for conv in self.convs:
                m = m[:, ::2]
                x = F.gelu(conv(x)) * m[:, None, :]
            x = self.out(x)                                        # (B, D, F/k)
        x = x.transpose(1, 2)                                      # (B, F/k, D)
        # A token is real when its first frame is: rows are padded to whole tokens by the processor.
        mask = part["mask"][:, :: self.k]
        n = min(x.shape[1], mask.shape[1], self.pos.num_embeddings)
        x = x[:, :n] + self.pos.weight[:n][None]
        return {"tokens": self.drop(x), "mask": mask[:, :n]}


class SpectrogramCNN(nn.Module):
    """A plain 2-D CNN over the log-mel image, one token per k frames:

        3x3 conv, stride 2 -> BatchNorm -> ReLU
        max(4, log2 k) - 1 x [3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool] -> mean over bands -> 1x1 conv to D

    with widths w, 2w, 4w, 4w, ... The first layer halves bands and frames (k > 1) by its stride, as
    ResNet's stem does, where a 2x2 pool after a full-resolution layer would cost twice the time
    (that layer and its BatchNorm handle the largest tensor; avdigits, one speaker held out: the
    same accuracy at half the time). Time is halved in the first log2(k) stages only, frequency in
    every stage while bands remain. Why 2-D: the same word from another voice sits a few mel bands
    higher or lower; a 3x3 kernel that slides over bands as well as frames finds it there too, where
    the 1-D 'conv' stem (bands as channels) has to learn each shift apart (docs/benchmarks.md,
    "Scratch audio front end").

    BatchNorm's training statistics cover real frames only (padding is not part of any clip); in
    eval it uses running statistics, so serving, export and batch-1 calls are batch-independent.
    """

    def __init__(self, n_mels: int, d: int, k: int, width: int):
        super().__init__()
        self.time_pools = int(math.log2(k))
        stages = max(4, self.time_pools)
        widths = [width * 2 ** min(i, 2) for i in range(stages)]
        # The first layer's stride: bands always, frames when tokens span more than one frame.
        first = (2, 2 if self.time_pools else 1)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=first if i == 0 else 1, padding=1)
                                   for i, (a, b) in enumerate(zip([1] + widths, widths)))
        self.norms = nn.ModuleList(MaskedBatchNorm2d(c) for c in widths)
        self.out = nn.Conv1d(widths[-1], d, 1)
        init_conv_stem([*self.convs, self.out])

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = mel[:, None]                                           # (B, 1, M, F)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            mask = mask[:, :: conv.stride[1]]                      # a strided layer halves frames
            x = F.relu(norm(conv(x), mask)) * mask[:, None, None, :].to(x.dtype)
            if i == 0:
                continue                                           # the first layer strided instead of pooling
            # ReLU outputs are >= 0, so a pooled window that reaches into zeroed padding keeps its max.
            t = 2 if i < self.time_pools else 1
            f = 2 if x.shape[2] >= 2 else 1
            x = F.max_pool2d(x, (f, t))
            mask = mask[:, ::t]
        return self.out(x.mean(2))                                 # (B, D, F/k)


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over (B, C, H, T) whose training statistics count only the real time steps
    (mask (B, T)), so a clip's padding, or a row without audio, never shifts another clip's values."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask[:, None, :].to(x.dtype)                           # (B, 1, T)
        n = w.sum() * x.shape[2]
        if not self.training or n < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        # Sums over H first, so the mask multiplies (B, C, T) tensors rather than the whole (B, C, H, T).
        mean = (x.sum(2) * w).sum((0, 2)) / n                     # (C,)
        var = ((x * x).sum(2) * w).sum((0, 2)) / n - mean * mean
        var = var.clamp_min(0.0)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(var + self.eps)
        return torch.addcmul((self.bias - mean * scale)[:, None, None], x, scale[:, None, None])
