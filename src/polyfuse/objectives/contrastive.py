"""Symmetric InfoNCE between per-column pooled embeddings, for every pair of columns a batch has.

Each column is encoded on its own (the other columns left out), pooled, projected and normalised,
so an embedding never sees the other modality it is matched against. Under DDP the candidates are
gathered from every process (gradient flows back through this process's own shard), so each row
is contrasted with the global batch.

With `locked` columns (PretrainConfig.lock_towers, LiT: Zhai et al., 2022) a column read by a frozen
pretrained tower is embedded by the tower alone, the mean of its output vectors, with no trained
projection: the other columns learn to land in the tower's own space, which keeps what the tower
knows about sentences it never saw in this table. On emoji, matching a CNN to fixed MiniLM sentence
vectors beat learning a projection of them (R@10 0.377 vs 0.306, docs/benchmarks.md).
"""
from __future__ import annotations

import math
from itertools import combinations

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .common import Needs, Step, same_group, zero_loss


def info_nce(za: torch.Tensor, zb: torch.Tensor, scale: torch.Tensor | float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(N, P), (N, P) normalised; row i of za matches row i of zb. Mean of both directions' CE.
    exclude (N, N), True where i != j are known matches: left out of each other's negatives."""
    logits = scale * za @ zb.T                                     # (N, N)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    target = torch.arange(len(za), device=za.device)
    return 0.5 * (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of x from every process, concatenated in rank order; identity without torch.distributed.

    all_gather returns tensors without gradient, so this process's slot is replaced by x itself:
    the gradient of the global loss reaches the local shard, and DDP averages the rest. Processes
    may hold different numbers of rows (the last batch): rows are padded to the largest, then cut.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, max(sizes) - x.shape[0])).contiguous()
    bufs = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(bufs, padded.detach())
    bufs[rank] = padded
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)])


class Contrastive(nn.Module):
    name, masks, joint = "contrastive", False, False
    needs = Needs(columns=2)

    def __init__(self, d_model: int, streams: list[tuple[str, str]], proj_dim: int, temperature: float,
                 locked: dict | None = None, pooled: dict | None = None):
        """locked: {column: width of its frozen tower}; the embedding width is then the towers'.
        pooled: {column: its tower's width}: one Linear on the tower's mean-pooled output."""
        super().__init__()
        self.locked = dict(locked or {})
        self.pooled = {c: w for c, w in (pooled or {}).items() if c not in self.locked}
        widths = set(self.locked.values())
        if len(widths) > 1:
            raise ConfigError(f"locked towers must share one output width, got {self.locked}")
        self.out_dim = widths.pop() if widths else proj_dim
        self.index = {c: str(i) for i, (c, _) in enumerate(streams)}
        self.proj = nn.ModuleDict({i: nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                                    nn.Linear(d_model, self.out_dim))
                                   for c, i in self.index.items() if c not in self.locked and c not in self.pooled})
        self.proj.update({self.index[c]: nn.Linear(w, self.out_dim) for c, w in self.pooled.items()})
        # CLIP's learnable temperature, as log(1 / t); the scale is capped at 100 to stay stable.
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def column_vector(self, model, col: str, part: dict, encoded: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One column fused alone -> (B, P) embedding before normalising, (B,) present.
        encoded: the column's encoder output when the caller has it already (a pretraining step)."""
        if col in self.locked:
            return model.encoders[part["modality"]].pooled_features(part)   # the tower's own mean pooling
        if col in self.pooled:
            h, present = model.encoders[part["modality"]].pooled_features(part)
            return self.proj[self.index[col]](h), present
        fused = model.fuse({col: encoded if encoded is not None else model.encode_columns({col: part})[col]})
        return self.proj[self.index[col]](fused.per_column[col]), fused.present[col]

    def forward(self, model, step: Step, state: dict) -> dict:
        emb, pres = {}, {}
        for col in (c for c in step.inputs if c in self.index):
            vec, pres[col] = self.column_vector(model, col, step.inputs[col], step.clean[col])
            emb[col] = F.normalize(vec.float(), dim=-1)
        scale = self.scale()
        state["similarity"] = {}
        out, losses = {}, []
        for a, b in combinations(emb, 2):
            if a in self.locked and b in self.locked:
                continue                      # two fixed towers: nothing to learn between them
            # Hard negatives for ITM: this batch's similarities, no gradient.
            sim = (scale * emb[a] @ emb[b].T).detach()
            state["similarity"][(a, b)] = sim
            # How well the embeddings already tell this batch's pairs apart (top-1 both ways):
            # ITM draws that share of its negatives by similarity, the rest uniformly.
            ok = pres[a] & pres[b]
            if int(ok.sum()) >= 2:
                s = sim[ok][:, ok]
                target = torch.arange(len(s), device=s.device)
                top1 = 0.5 * ((s.argmax(1) == target).float().mean() + (s.argmax(0) == target).float().mean())
                state.setdefault("separation", {})[(a, b)] = float(top1)
            za, zb = gather_with_grad(emb[a]), gather_with_grad(emb[b])
            both = gather_with_grad((pres[a] & pres[b]).float()) > 0      # rows that have both columns
            if int(both.sum()) < 2:
                continue                                           # no negatives: nothing to contrast
            exclude = None
            if step.groups is not None:
                g = gather_with_grad(step.groups[:, None].float())[:, 0][both]
                exclude = same_group(g, len(g), g.device)
            loss = info_nce(za[both], zb[both], scale, exclude)
            out[f"contrastive_{a}_{b}_loss"] = loss.detach()
            losses.append(loss)
        total = torch.stack(losses).mean() if losses else zero_loss(self.log_scale)
        out.update(loss=total, contrastive_loss=total, temperature=(1.0 / scale).detach())
        return out
