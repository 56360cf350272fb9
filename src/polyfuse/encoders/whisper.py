"""Whisper's encoder at each clip's own length.

transformers' WhisperEncoder insists on 30-second inputs (3,000 mel frames, 1,500 positions): a
1-second clip padded to 30 s costs 30 times its own length, and its few real positions attend
over 29 seconds of silence. The encoder itself does not need that: its two convolutions and its
layers run on any length, and a clip's positions are the first T of the learned embedding. This
runs the tower's own modules on the clip's frames, with the positional embedding sliced to the
clip and padded positions masked out of every attention:

    (B, n_mels, F) log-mel, frames (B,) -> conv1, GELU -> conv2 (stride 2), GELU -> + positions[:T]
    -> layers (padding masked) -> layer norm -> (B, T, H), T = ceil(F / 2)

A row's output does not depend on its batch: after each convolution the frames past the row's
end are zeroed, as the convolution's own zero padding would be for the row alone.

The processor (data/pretrained.py) appends silence to each clip up to audio.tower_min_seconds
before the extractor, and the encoder (encoders/pretrained.py) keeps the clip's own positions
of the output: Whisper reads a short clip better with silence after it, as in its 30-s windows.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import InputError


def conv_out(frames: torch.Tensor) -> torch.Tensor:
    """Positions after conv2 (kernel 3, stride 2, padding 1) for `frames` mel frames."""
    return (frames - 1) // 2 + 1


def whisper_features(encoder, feats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states (B, T, H), positions per row (B,)) of a WhisperEncoder on clip-length input."""
    B, _, L = feats.shape
    keep_in = (torch.arange(L, device=feats.device)[None] < frames[:, None]).to(feats.dtype)      # (B, F)
    x = F.gelu(encoder.conv1(feats * keep_in[:, None])) * keep_in[:, None]                      # (B, H, F)
    x = F.gelu(encoder.conv2(x))                                                                 # (B, H, T)
    n = conv_out(frames)
    T = x.shape[-1]
    limit = encoder.embed_positions.num_embeddings
    if T > limit:
        raise InputError(f"an audio clip of {L} mel frames is longer than the Whisper tower's "
                         f"{2 * limit} (30 s): lower audio.max_seconds")
    keep = torch.arange(T, device=feats.device)[None] < n[:, None]                               # (B, T)
    x = x.transpose(1, 2) * keep[..., None].to(x.dtype) + encoder.embed_positions.weight[:T][None]
    x = F.dropout(x, p=encoder.dropout, training=encoder.training)
    # Additive mask over keys (B, 1, T, T): padded positions get no attention from any query.
    bias = torch.zeros(B, 1, T, T, dtype=x.dtype, device=x.device)
    bias = bias.masked_fill(~keep[:, None, None, :], torch.finfo(x.dtype).min)
    for layer in encoder.layers:
        x = layer(x, bias)
    return encoder.layer_norm(x), n
