"""Polyfuse's CPU dropout (fusion/dropout.py: four 16-bit lanes per 64-bit draw; attention
dropout through fusion/dropout_attention.py) against torch's own (`bernoulli_`, one generator call
per element; SDPA's unfused dropout path), side by side in one process.

    .venv/bin/python bench/dropout.py

1. Drawing and applying the mask alone, forward + backward, at a few activation sizes.
2. A whole training step (forward, loss, backward, AdamW) of two PolyfuseModels built as
   bench/train_step.py builds them: the scale benchmark's tiny model (d=32, 1 layer, batch 64,
   64 px images in 16 px patches, 1 s audio, 16 text tokens) and train_step's default (d=256, 6
   layers, batch 8), each as it is and with torch's dropout: its Dropout modules swapped for
   torch.nn.Dropout and its fusion blocks attending through SDPA with dropout_p (same weights,
   same batch; for the scale model, whose 46 tokens took SDPA's path before, this is Polyfuse
   before the change). Repetitions alternate the two; medians are reported, so a busy
   neighbour on this shared machine slows both sides of a comparison alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polyfuse.fusion.dropout import Dropout, dropout                  # noqa: E402
from polyfuse.fusion.transformer import Block                         # noqa: E402
from polyfuse.model import PolyfuseModel                               # noqa: E402
from train_step import make_batch, make_config, parse as step_args     # noqa: E402


class SdpaBlock(Block):
    """Block with torch's attention dropout: SDPA's dropout_p whatever the sequence length."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


def with_torch_dropout(model: nn.Module) -> nn.Module:
    """A copy of `model` with torch's dropout: nn.Dropout of the same p, SDPA's attention dropout."""
    other = copy.deepcopy(model)
    for parent in list(other.modules()):
        if isinstance(parent, Block):
            parent.__class__ = SdpaBlock
        for name, child in list(parent.named_children()):
            if isinstance(child, Dropout):
                setattr(parent, name, nn.Dropout(child.p))
    return other


def interleaved(fns: dict, reps: int, per_rep: int) -> dict:
    """Median seconds per call of each function, the calls alternating in order every repetition."""
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(per_rep):
                fns[k]()
            times[k].append((time.perf_counter() - t0) / per_rep)
    return {k: statistics.median(v) for k, v in times.items()}


def mask_alone(p: float, reps: int):
    for shape in [(64, 46, 32), (8, 200, 256), (8, 200, 1024)]:
        x = torch.randn(shape, requires_grad=True)

        def ours():
            dropout(x, p, True).sum().backward()

        def theirs():
            F.dropout(x, p, True).sum().backward()
        t = interleaved({"polyfuse": ours, "torch": theirs}, reps, 20)
        print(json.dumps({"what": "dropout fwd+bwd", "shape": list(shape), "p": p,
                          "polyfuse_ms": round(t["polyfuse"] * 1e3, 3), "torch_ms": round(t["torch"] * 1e3, 3),
                          "speedup": round(t["torch"] / t["polyfuse"], 2)}), flush=True)


def step(name: str, argv: list[str], reps: int):
    sys.argv = ["train_step.py", *argv]
    a = step_args()
    cfg = make_config(a)
    batch, _ = make_batch(cfg, a.batch, torch.Generator().manual_seed(0))
    ours = PolyfuseModel(cfg, cfg.schema, 10, vocab_size=cfg.text.vocab_size).train()
    models = {"polyfuse": ours, "torch": with_torch_dropout(ours)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True) for k, m in models.items()}

    def one(k):
        def run():
            opts[k].zero_grad(set_to_none=True)
            models[k](batch)["loss"].backward()
            opts[k].step()
        return run
    fns = {k: one(k) for k in models}
    for f in fns.values():
        for _ in range(3):
            f()
    t = interleaved(fns, reps, 5)
    print(json.dumps({"what": f"training step, {name}", "dropout": cfg.model.dropout,
                      "polyfuse_ms": round(t["polyfuse"] * 1e3, 2), "torch_ms": round(t["torch"] * 1e3, 2),
                      "speedup": round(t["torch"] / t["polyfuse"], 3)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    mask_alone(0.1, args.reps)
    step("scale benchmark's model (d=32, 1 layer, batch 64)",
         ["--d-model", "32", "--layers", "1", "--heads", "2", "--batch", "64", "--text-tokens", "16",
          "--patch", "16", "--audio-seconds", "1"], args.reps)
    step("train_step's default (d=256, 6 layers, batch 8)", [], args.reps)


if __name__ == "__main__":
    main()
