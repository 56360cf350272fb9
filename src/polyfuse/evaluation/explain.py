"""Per-row attributions: gradient x input on each encoder's output tokens, and attention rollout.

Both give one score per token of each column; `to_input_shape` maps them back onto the input:
text tokens, image pixels (each patch's score over its patch), audio frames (each token's score
over its frames). A row is explained alone (batch of one), so padding never enters.

Attention rollout (Abnar & Zuidema, 2020): per block A' = 0.5 A + 0.5 I (the residual), rows
renormalised, multiplied through the stack; the pooled output's row is read off. With attention
fusion that is the [CLS] row over all tokens; concat and late fusion pool each column by a masked
mean, so their rollout is the mean row of each column's own stack.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..fusion.transformer import Block, Stack
from ..inference import Predictor


def explain_row(predictor: Predictor, data, i: int, target: int | None = None) -> dict:
    """{"output": (K,), "target": k, "columns": {col: {"modality", "grad_x_input", "rollout"}}, "share": {...}}."""
    model = predictor.model.eval()
    batch = predictor.collate([i], data)
    inputs = batch["inputs"]
    enc_out, stack_calls, hooks = [], [], []

    def keep_tokens(mod, args, out):        # returns None: the output itself is left unchanged
        out["tokens"].retain_grad()
        enc_out.append(out)
    for enc in model.encoders.values():
        hooks.append(enc.register_forward_hook(keep_tokens))
    for mod in model.fusion.modules():
        if isinstance(mod, Stack):
            hooks.append(mod.register_forward_pre_hook(lambda mod, args: stack_calls.append([])))
        if isinstance(mod, Block):
            hooks.append(mod.register_forward_pre_hook(
                lambda mod, args: stack_calls[-1].append((mod, args[0].detach(), args[1]))))
    try:
        with torch.enable_grad():
            logits = model({"inputs": inputs})["logits"][0]                     # (K,)
            if predictor.labels.task == "regression":
                target = 0
            elif target is None:
                target = int(logits.argmax())
            logits[target].backward()
    finally:
        for h in hooks:
            h.remove()
    cols = list(inputs)                    # encoders run in the inputs' order (model.encode)
    gxi = {c: (e["tokens"].grad * e["tokens"]).sum(-1)[0].detach() for c, e in zip(cols, enc_out)}   # (T_c,)
    rollout = _rollout_by_column(predictor, cols, stack_calls, enc_out)
    columns = {}
    for c in cols:
        real = inputs[c]["mask"][0] if "mask" in inputs[c] else torch.ones(gxi[c].shape[0], dtype=torch.bool)
        real = real[:: predictor.cfg.audio.frames_per_token] if inputs[c]["modality"] == "audio" else real
        real = real[: gxi[c].shape[0]]
        columns[c] = {"modality": inputs[c]["modality"], "grad_x_input": (gxi[c] * real).numpy(),
                      "rollout": None if rollout.get(c) is None else (rollout[c] * real).numpy()}
    with torch.no_grad():
        # In label units, as every prediction is (a regression head predicts the standardised value).
        output = predictor.labels.to_units(model.head.probabilities(logits.detach()[None]).numpy())[0]
    return {"output": output, "target": target, "columns": columns, "share": shares(columns)}


def _rollout_by_column(predictor, cols, stack_calls, enc_out) -> dict:
    if predictor.cfg.model.fusion == "attention":
        r = rollout(stack_calls[0])[0]                       # the [CLS] row, (T,)
        out, t = {}, 1
        for c, e in zip(cols, enc_out):
            n = e["tokens"].shape[1]
            out[c], t = r[t:t + n], t + n
        return out
    # concat and late: one stack call per column present, in column order; pooled = masked mean.
    out = {}
    for c, calls in zip(cols, stack_calls):
        mask = calls[0][2][0, 0, 0]                          # (T,)
        r = rollout(calls)
        out[c] = r[mask].mean(0) if mask.any() else torch.zeros(r.shape[1])
    return out


@torch.no_grad()
def rollout(calls: list) -> torch.Tensor:
    """calls: [(block, x (1, T, D), attn_mask (1, 1, 1, T))] of one stack -> (T, T) rolled-out attention."""
    R = None
    for blk, x, attn_mask in calls:
        B, T, D = x.shape
        H = blk.n_heads
        q, k, _ = blk.qkv(blk.ln1(x)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (D // H) ** 0.5                # (1, H, T, T)
        scores = scores.masked_fill(~attn_mask, float("-inf"))
        A = F.softmax(scores, -1).mean(1)[0]                                # (T, T)
        A = 0.5 * A + 0.5 * torch.eye(T)
        A = A / A.sum(-1, keepdim=True)
        R = A if R is None else A @ R
    return R


def shares(columns: dict) -> dict:
    """Each modality's share of the total |attribution|, for both methods."""
    out = {}
    for method in ("grad_x_input", "rollout"):
        tot = {}
        for col in columns.values():
            if col[method] is not None:
                tot[col["modality"]] = tot.get(col["modality"], 0.0) + float(np.abs(col[method]).sum())
        s = sum(tot.values())
        out[method] = {m: v / s if s > 0 else 0.0 for m, v in tot.items()}
    return out


def to_input_shape(predictor: Predictor, modality: str, scores: np.ndarray, item: dict) -> np.ndarray:
    """Token scores onto the input: text (T,), image (S, S) pixels, audio (F,) spectrogram frames."""
    if modality == "text":
        return scores[: len(item["ids"])]
    if modality == "image":
        S = item["pixels"].shape[-1]
        G = int(round(len(scores) ** 0.5))
        return np.kron(scores.reshape(G, G), np.ones((S // G, S // G)))
    k = predictor.cfg.audio.frames_per_token
    F_ = item["mel"].shape[1]
    return np.pad(np.repeat(scores, k), (0, max(0, F_ - k * len(scores))))[:F_]
