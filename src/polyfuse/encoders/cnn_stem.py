"""A residual CNN stem for images (image.stem 'cnn'): a token per patch with a real receptive field.

The 'conv' stem is one stride-2 convolution per halving, so a 9x9 grid token at 72 px sees little
more than its own 8x8 patch and has three nonlinearities. Trained from scratch on ~2,000 emoji it
left the image side the weak half of text-image retrieval (docs/benchmarks.md, emoji contrastive).
Here every resolution gets `blocks` pre-activation residual blocks before its stride-2 convolution:

    3x3 conv -> [blocks x ResBlock(c), stride-2 conv c -> 2c] x log2(patch) -> blocks x ResBlock -> 1x1 conv to D

with width `width` at full resolution, doubling per halving (a 9x9 grid from 72 px at width 32 has
256 channels, as a plain 4-layer CNN would; the 1x1 convolution maps them to D). Each block's last
convolution starts at zero, so every block starts as the identity and depth does not blow up the
signal at initialisation. With `downsample='max'` each halving is a 2x2 max-pool of the activated
features followed by a 3x3 conv c -> 2c at the new resolution instead (as a plain CNN does; the
same cost, and a feature survives a one-pixel shift).

Normalisation (`norm`): GroupNorm by default, since it does not depend on the batch: DDP shards,
batch-1 serving and absent images give the same per-image result as training. BatchNorm trains
better from scratch on small image sets (on emoji a plain CNN lost 0.04 R@10 with GroupNorm), and
in eval mode it is batch-independent too (running statistics); in training `ImageEncoder` runs the
stem on the present images only, so absent (all-zero) images never enter the batch statistics.
"""
from __future__ import annotations

import math

from torch import nn



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


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if c % 8 == 0 else 1, c)


NORMS = {"group": group_norm, "batch": nn.BatchNorm2d}


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), 3x3, same width."""

    def __init__(self, c: int, norm: str = "group"):
        super().__init__()
        N = NORMS[norm]
        self.body = nn.Sequential(N(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1),
                                  N(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def cnn_stem(c_in: int, d: int, stride: int, width: int, blocks: int, norm: str = "group",
             downsample: str = "conv") -> nn.Sequential:
    """(B, c_in, S, S) -> (B, d, S / stride, S / stride); stride a power of two; norm 'group' | 'batch';
    downsample 'conv' | 'max'."""
    N = NORMS[norm]
    steps = int(math.log2(stride))
    widths = [width * 2 ** i for i in range(steps + 1)]                  # channels per resolution
    layers = [nn.Conv2d(c_in, widths[0], 3, padding=1)]
    for i in range(steps):
        layers += [ResBlock(widths[i], norm) for _ in range(blocks)]
        pool = [nn.MaxPool2d(2)] if downsample == "max" else []
        layers += [N(widths[i]), nn.GELU(), *pool,
                   nn.Conv2d(widths[i], widths[i + 1], 3, stride=1 if pool else 2, padding=1)]
    layers += [ResBlock(widths[-1], norm) for _ in range(blocks)]
    layers += [N(widths[-1]), nn.GELU(), nn.Conv2d(widths[-1], d, 1)]
    stem = nn.Sequential(*layers)
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    init_conv_stem(convs)                      # He init, zero biases; the last (1x1) one linear
    for block in (m for m in stem.modules() if isinstance(m, ResBlock)):
        nn.init.zeros_(block.body[-1].weight)  # the block starts as the identity
    return stem
