"""Attention with dropout on the attention probabilities, for training on a CPU.

On a CPU, `scaled_dot_product_attention` with dropout_p > 0 falls back to its unfused "math" path:
several full (B, H, T, T) tensors per layer written and read again, an order of magnitude slower than
without dropout. This computes the same thing,

    out = dropout(softmax(q k^T * scale + bias), p) v

one slice of heads at a time, so each (g, T, T) block stays in cache, and writes the gradient straight
into the fused qkv layout (no stack/permute copies). It keeps the softmax output and the dropout mask
(bool) for the backward pass. Only the dropout draws differ from SDPA's (same distribution).
"""
from __future__ import annotations

import torch

from .dropout import dropout, keep_mask

# Elements of one (g, T, T) block: about 1 MB of fp32, what an L2 cache holds.
BLOCK_ELEMENTS = 1 << 18


class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, bias: torch.Tensor | None, p: float, scale: float) -> torch.Tensor:
        B, T, _, H, Dh = qkv.shape                                 # (B, T, 3, H, Dh)
        g = max(1, min(H, BLOCK_ELEMENTS // (T * T)))
        out = qkv.new_empty(B, T, H, Dh)
        probs, keeps = [], []
        for b in range(B):
            for h in range(0, H, g):
                q, k, v = qkv[b, :, :, h:h + g].permute(1, 2, 0, 3)   # each (g, T, Dh)
                s = torch.matmul(q * scale, k.transpose(1, 2))       # (g, T, T)
                if bias is not None:
                    s += bias[b]                          # (1, T): 0, or the dtype's lowest on padding
                a = s.softmax(-1)
                keep = keep_mask(a.shape, p, a.device)       # bernoulli_'s distribution, drawn cheaper
                o = torch.matmul(torch.where(keep, a, 0.0), v)        # (g, T, Dh)
                out[b, :, h:h + g] = o.transpose(0, 1).mul_(1.0 / (1.0 - p))
                probs.append(a)
                keeps.append(keep)
        ctx.save_for_backward(qkv, *probs, *keeps)
        ctx.p, ctx.scale, ctx.g = p, scale, g
        return out                                                 # (B, T, H, Dh)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qkv, *saved = ctx.saved_tensors
        B, T, _, H, Dh = qkv.shape
        n = len(saved) // 2
        probs, keeps = saved[:n], saved[n:]
        p, scale, g = ctx.p, ctx.scale, ctx.g
        dqkv = torch.empty_like(qkv)
        i = 0
        for b in range(B):
            for h in range(0, H, g):
                q, k, v = qkv[b, :, :, h:h + g].permute(1, 2, 0, 3)   # each (g, T, Dh)
                a, keep = probs[i], keeps[i]
                i += 1
                do = grad[b, :, h:h + g].transpose(0, 1) * (1.0 / (1.0 - p))    # (g, T, Dh)
                dv = torch.matmul(torch.where(keep, a, 0.0).transpose(1, 2), do)
                da = torch.where(keep, torch.matmul(do, v.transpose(1, 2)), 0.0)  # (g, T, T)
                ds = torch._softmax_backward_data(da, a, -1, a.dtype)
                dq = torch.matmul(ds, k).mul_(scale)
                dk = torch.matmul(ds.transpose(1, 2), q).mul_(scale)
                blk = dqkv[b, :, :, h:h + g]                          # (T, 3, g, Dh)
                blk[:, 0] = dq.transpose(0, 1)
                blk[:, 1] = dk.transpose(0, 1)
                blk[:, 2] = dv.transpose(0, 1)
        return dqkv, None, None, None


def dropout_attention(qkv: torch.Tensor, bias: torch.Tensor | None, p: float, scale: float) -> torch.Tensor:
    """qkv (B, T, 3, H, Dh); bias (B, 1, T) additive (0 or a large negative) or None -> (B, T, H, Dh)."""
    return _DropoutAttention.apply(qkv, bias, p, scale)


def dropout_attention_short(qkv: torch.Tensor, bias: torch.Tensor | None, p: float, scale: float) -> torch.Tensor:
    """The same maths for short sequences, where the whole (B*H, T, T) fits in cache and autograd's
    own backward is the cheaper one: scaling and the padding bias in one baddbmm, the mask from
    fusion/dropout.py (the Block picks it by size: transformer.SHORT_MAX_ELEMENTS). 1.45-1.7x faster
    than SDPA's unfused dropout path (fwd+bwd, one thread: B=64 H=2 T=46 11.8 -> 8.2 ms, B=32 H=4
    T=16 3.0 -> 1.8 ms, B=8 H=8 T=120 29.7 -> 18.7 ms).
    qkv (B, T, 3, H, Dh); bias (B, 1, T) or None -> (B, T, H, Dh)."""
    B, T, _, H, Dh = qkv.shape
    q, k, v = (t.reshape(B * H, T, Dh) for t in qkv.permute(2, 0, 3, 1, 4))     # each (B*H, T, Dh)
    if bias is None:
        s = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    else:
        keys = bias[:, None].expand(B, H, 1, T).reshape(B * H, 1, T)
        s = torch.baddbmm(keys, q, k.transpose(1, 2), alpha=scale)            # (B*H, T, T)
    a = dropout(s.softmax(-1), p, True)
    return torch.bmm(a, v).view(B, H, T, Dh).transpose(1, 2)                 # (B, T, H, Dh)
