"""Image-text (any pair) matching: is this pair of columns from the same row? Scored from [CLS].

For each pair of columns (a, b) in the batch: every row that has both is a positive; every row
also gets one negative, where one side (a or b, by a coin) is swapped for another row's cell.
The swap is uniform within the batch, or, once the contrastive objective has run this step,
drawn in proportion to softmax(similarity): hard negatives, the pairs the embeddings confuse most.
Rows missing a or b contribute nothing for this pair. Loss: binary cross-entropy.
"""
from __future__ import annotations

from itertools import combinations

import torch
from torch import nn
from torch.nn import functional as F

from .common import present, take, zero_loss


def draw_negatives(pa: torch.Tensor, pb: torch.Tensor, sim: torch.Tensor | None = None,
                   generator=None) -> torch.Tensor:
    """(B,) index j of a b-cell to pair with a_i (j != i, row j has b), or -1 when a_i is absent or
    no other row has b. sim (B, B), when given, weights j by softmax(sim[i]) over the candidates."""
    B = len(pa)
    cand = pb[None, :].expand(B, B) & ~torch.eye(B, dtype=torch.bool, device=pa.device)   # (B, B)
    scores = sim.float() if sim is not None else torch.zeros(B, B, device=pa.device)
    scores = scores.masked_fill(~cand, float("-inf"))
    ok = pa & cand.any(1)
    j = torch.full((B,), -1, dtype=torch.long, device=pa.device)
    if ok.any():
        probs = scores[ok].softmax(-1)
        j[ok] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(pa.device)
    return j


def matching_pairs(pa, pb, sim=None, generator=None):
    """Index lists (ia, ib) and labels (1 matched, 0 mismatched) for one pair of columns."""
    B = len(pa)
    rows = torch.arange(B, device=pa.device)
    pos = rows[pa & pb]
    swap_b = draw_negatives(pa, pb, sim, generator)                        # (a_i, b_j)
    swap_a = draw_negatives(pb, pa, sim.T if sim is not None else None, generator)  # (a_k, b_i)
    coin = torch.rand(B, generator=generator).to(pa.device) < 0.5
    use_b = (swap_b >= 0) & (coin | (swap_a < 0))
    use_a = (swap_a >= 0) & ~use_b
    ia = torch.cat([pos, rows[use_b], swap_a[use_a]])
    ib = torch.cat([pos, swap_b[use_b], rows[use_a]])
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(int(use_b.sum()) + int(use_a.sum()))]).to(pa.device)
    return ia, ib, labels


class ITM(nn.Module):
    def __init__(self, d_model: int, hard_negatives: bool = True):
        super().__init__()
        self.hard_negatives = hard_negatives
        self.head = nn.Linear(d_model, 1)

    def forward(self, model, inputs: dict, state: dict) -> dict:
        out, losses = {}, []
        sims = state.get("similarity", {}) if self.hard_negatives else {}
        for a, b in combinations(inputs, 2):
            ia, ib, labels = matching_pairs(present(inputs[a]), present(inputs[b]), sims.get((a, b)))
            if len(labels) == 0:
                continue
            pooled = model.encode({a: take(inputs[a], ia), b: take(inputs[b], ib)})["pooled"]
            logit = self.head(pooled).squeeze(-1).float()                     # (N,)
            loss = F.binary_cross_entropy_with_logits(logit, labels)
            out[f"itm_{a}_{b}_loss"] = loss.detach()
            out[f"itm_{a}_{b}_accuracy"] = ((logit > 0).float() == labels).float().mean().detach()
            losses.append(loss)
        total = torch.stack(losses).mean() if losses else zero_loss(self.head.weight)
        out.update(loss=total, itm_loss=total)
        return out
