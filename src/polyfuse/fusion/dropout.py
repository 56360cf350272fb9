"""Dropout whose mask is cheap to draw on a CPU.

torch's CPU dropout draws its mask with `bernoulli_`, one call of the generator per element: on
the small models Polyfuse trains on two cores the masks were about a sixth of a training step.
Here one 64-bit draw gives four 16-bit lanes, each uniform on [-32768, 32767], and an element is
kept where its lane is at or above a threshold: P(keep) = 1 - round(65536 p) / 65536, the requested
1 - p to within 1/131072. Forward and backward are about 2x faster than `F.dropout` on a CPU
(bench/dropout.py; docs/benchmarks.md, "Cheaper dropout and optimizer steps on a CPU"). Other
devices keep torch's own fused kernels.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LANES = 4                      # 16-bit lanes per 64-bit draw
LANE_VALUES = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - p, independently."""
    n = math.prod(shape)
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + LANES - 1) // LANES,), dtype=torch.int64, device=device)
    lanes = bits.view(torch.int16)[:n].view(shape)          # uniform on [-32768, 32767]
    return lanes >= round(p * LANE_VALUES) - LANE_VALUES // 2


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout's contract: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    # The scaled mask is the only tensor the backward pass keeps (the gradient is grad * scale).
    scale = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scale


class Dropout(nn.Module):
    """nn.Dropout with the mask drawn as above on a CPU; no parameters, so state dicts are unchanged."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
