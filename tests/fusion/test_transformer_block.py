"""The Transformer block equals a straightforward pre-norm attention block with a key padding mask."""
import math

import pytest
import torch
from torch.nn import functional as F

from polyfuse.fusion import dropout_attention as da
from polyfuse.fusion import transformer
from polyfuse.fusion.dropout import keep_mask
from polyfuse.fusion.transformer import Block

B, T, D, H = 3, 10, 16, 4


def padding_mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return mask


def reference_attention(q, k, v, mask, keep=None, p=0.0):
    """q, k, v (B, H, T, Dh); mask (B, T) True on real keys; keep (B, H, T, T) dropout mask."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    a = s.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    if keep is not None:
        a = a * keep / (1 - p)
    return a @ v


def reference_block(blk: Block, x, mask):
    h = F.layer_norm(x, (D,), blk.ln1.weight, blk.ln1.bias)
    q, k, v = (h @ blk.qkv.weight.T + blk.qkv.bias).split(D, -1)
    heads = [t.reshape(B, T, H, D // H).transpose(1, 2) for t in (q, k, v)]
    y = reference_attention(*heads, mask).transpose(1, 2).reshape(B, T, D)
    x = x + y @ blk.proj.weight.T + blk.proj.bias
    h = F.layer_norm(x, (D,), blk.ln2.weight, blk.ln2.bias)
    return x + F.gelu(h @ blk.fc1.weight.T + blk.fc1.bias) @ blk.fc2.weight.T + blk.fc2.bias


@pytest.mark.parametrize("train", [False, True])
def test_block_matches_reference(train):
    torch.manual_seed(0)
    blk = Block(D, H, 4.0, dropout=0.0).train(train)
    x, mask = torch.randn(B, T, D), padding_mask()
    out = blk(x, mask[:, None, None, :])
    assert torch.allclose(out, reference_block(blk, x, mask), atol=1e-5)


@pytest.mark.parametrize("short_max", [0, 10**12], ids=["blockwise", "short"])
def test_block_ignores_padded_keys_with_dropout(monkeypatch, short_max):
    """In training with dropout (either CPU path), padded key positions never matter."""
    monkeypatch.setattr(transformer, "SHORT_MAX_ELEMENTS", short_max)
    torch.manual_seed(0)
    blk = Block(D, H, 4.0, dropout=0.3).train()
    x, mask = torch.randn(B, T, D), padding_mask()
    x2 = x.clone()
    x2[~mask] = 100.0
    torch.manual_seed(1)
    a = blk(x, mask[:, None, None, :])
    torch.manual_seed(1)
    b = blk(x2, mask[:, None, None, :])
    assert torch.allclose(a[mask], b[mask], atol=1e-5)


def matches_reference(attend, draw_keep, p=0.3):
    """attend(qkv, bias, p, scale) with the same dropout mask as draw_keep() -> (B, H, T, T) gives
    the unfused maths' output and gradients."""
    Dh = D // H
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3, H, Dh, requires_grad=True)
    mask = padding_mask()
    torch.manual_seed(1)
    out = attend(qkv, transformer.key_bias(mask[:, None, None, :], qkv.dtype), p, Dh ** -0.5)   # (B, T, H, Dh)
    torch.manual_seed(1)
    keep = draw_keep()
    assert 0 < (~keep).sum() < keep.numel()
    q2 = qkv.detach().clone().requires_grad_()
    q, k, v = q2.permute(2, 0, 3, 1, 4)
    ref = reference_attention(q, k, v, mask, keep, p).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert torch.allclose(qkv.grad, q2.grad, atol=1e-5)


def test_dropout_attention_matches_reference(monkeypatch):
    """The blockwise path, across head blocks: the same draws in the same order (batch row by row,
    then two heads at a time)."""
    monkeypatch.setattr(da, "BLOCK_ELEMENTS", 2 * T * T)            # 2 heads a block: exercises blocking
    cpu = torch.device("cpu")
    matches_reference(da.dropout_attention, lambda: torch.stack(
        [torch.cat([keep_mask((2, T, T), 0.3, cpu) for _ in range(0, H, 2)]) for _ in range(B)]))


def test_short_dropout_attention_matches_reference():
    """The short-sequence path: one draw for all rows and heads."""
    matches_reference(da.dropout_attention_short,
                      lambda: keep_mask((B * H, T, T), 0.3, torch.device("cpu")).view(B, H, T, T))


@pytest.mark.parametrize("short_max", [0, 10**12], ids=["blockwise", "short"])
def test_a_row_with_no_key_trains_without_nan(monkeypatch, short_max):
    """A late-fusion stream for a row that lacks the modality has every key padded: its output is
    ignored downstream, but it must stay finite, or the backward pass spreads NaN to every weight."""
    monkeypatch.setattr(transformer, "SHORT_MAX_ELEMENTS", short_max)
    torch.manual_seed(0)
    blk = Block(D, H, 4.0, dropout=0.3).train()
    mask = padding_mask()
    mask[2] = False
    out = blk(torch.randn(B, T, D), mask[:, None, None, :])
    (out * mask[..., None]).sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in blk.parameters())
