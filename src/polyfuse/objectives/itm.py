"""Image-text (any pair) matching: is this pair of columns from the same row? Scored from [CLS].

For each pair of columns (a, b) in the batch: every row that has both is a positive; every row
also gets one negative, where one side (a or b, by a coin) is swapped for another row's cell.
The swap is uniform within the batch, or, once the contrastive objective has run this step,
drawn in proportion to softmax(similarity): hard negatives, the pairs the embeddings confuse most.
Rows missing a or b contribute nothing for this pair. Loss: binary cross-entropy.

Hard negatives assume one true partner per row. Where several rows match (a many-to-many pairing:
any image of a 7 matches any spoken 7) the hardest "negatives" are true matches, and ITM sits at
chance (ln 2). `pretrain.match_column` names the column whose equal values mark such rows: they are
never drawn as each other's negatives (here or in contrastive). Without it, the logged
`itm_suspect_negatives` (negatives rated as similar as a true pair) shows the problem.
"""
from __future__ import annotations

from itertools import combinations

import torch
from torch import nn
from torch.nn import functional as F

from .common import Needs, Step, present, same_group, take, zero_loss


def draw_negatives(pa: torch.Tensor, pb: torch.Tensor, sim: torch.Tensor | None = None,
                   generator=None, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) index j of a b-cell to pair with a_i (j != i, row j has b), or -1 when a_i is absent or
    no other row has b. sim (B, B), when given, weights j by softmax(sim[i]) over the candidates;
    exclude (B, B) marks known matches (same match group), never drawn as negatives."""
    B = len(pa)
    cand = pb[None, :].expand(B, B) & ~torch.eye(B, dtype=torch.bool, device=pa.device)   # (B, B)
    if exclude is not None:
        cand = cand & ~exclude
    scores = sim.float() if sim is not None else torch.zeros(B, B, device=pa.device)
    scores = scores.masked_fill(~cand, float("-inf"))
    ok = pa & cand.any(1)
    j = torch.full((B,), -1, dtype=torch.long, device=pa.device)
    if ok.any():
        probs = scores[ok].softmax(-1)
        j[ok] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(pa.device)
    return j


def matching_pairs(pa, pb, sim=None, generator=None, exclude=None):
    """Index lists (ia, ib) and labels (1 matched, 0 mismatched) for one pair of columns."""
    B = len(pa)
    rows = torch.arange(B, device=pa.device)
    pos = rows[pa & pb]
    swap_b = draw_negatives(pa, pb, sim, generator, exclude)                          # (a_i, b_j)
    swap_a = draw_negatives(pb, pa, sim.T if sim is not None else None, generator,
                            exclude.T if exclude is not None else None)               # (a_k, b_i)
    coin = torch.rand(B, generator=generator).to(pa.device) < 0.5
    use_b = (swap_b >= 0) & (coin | (swap_a < 0))
    use_a = (swap_a >= 0) & ~use_b
    ia = torch.cat([pos, rows[use_b], swap_a[use_a]])
    ib = torch.cat([pos, swap_b[use_b], rows[use_a]])
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(int(use_b.sum()) + int(use_a.sum()))]).to(pa.device)
    return ia, ib, labels


def suspect_negatives(ia, ib, labels, sim: torch.Tensor, pa, pb) -> torch.Tensor:
    """Share of the negatives (a_i, b_j) the embeddings rate at least as similar as a true pair of
    the same row (sim[i, j] >= sim[i, i], or >= sim[j, j]). On one-to-one data this falls as the
    embeddings learn; where it stays high, many negatives are probably true matches (many-to-many
    pairings: any image of a 7 matches any spoken 7) and ITM cannot learn; set pretrain.match_column."""
    neg = labels == 0
    i, j = ia[neg], ib[neg]
    diag = sim.diagonal()
    both = pa & pb
    above = ((sim[i, j] >= diag[i]) & both[i]) | ((sim[i, j] >= diag[j]) & both[j])
    return above.float().mean() if len(i) else sim.new_zeros(())


class ITM(nn.Module):
    name, masks = "itm", False
    needs = Needs(columns=2)

    def __init__(self, d_model: int, hard_negatives: bool = True):
        super().__init__()
        self.hard_negatives = hard_negatives
        self.head = nn.Linear(d_model, 1)

    def forward(self, model, step: Step, state: dict) -> dict:
        out, losses, suspect = {}, [], []
        sims = state.get("similarity", {})
        inputs, clean = step.inputs, step.clean
        B = next(iter(clean.values()))["mask"].shape[0]
        exclude = same_group(step.groups, B, next(iter(clean.values()))["mask"].device) \
            if step.groups is not None else None
        for a, b in combinations(inputs, 2):
            pa, pb = present(inputs[a]), present(inputs[b])
            sim = sims.get((a, b))
            ia, ib, labels = matching_pairs(pa, pb, sim if self.hard_negatives else None, exclude=exclude)
            if len(labels) == 0:
                continue
            # Pairs are re-assembled from this step's encoder outputs: no encoder runs again.
            pooled = model.fuse({a: take(clean[a], ia), b: take(clean[b], ib)}).pooled
            logit = self.head(pooled).squeeze(-1).float()                     # (N,)
            loss = F.binary_cross_entropy_with_logits(logit, labels)
            out[f"itm_{a}_{b}_loss"] = loss.detach()
            out[f"itm_{a}_{b}_accuracy"] = ((logit > 0).float() == labels).float().mean().detach()
            if sim is not None:
                suspect.append(suspect_negatives(ia, ib, labels, sim, pa, pb))
            losses.append(loss)
        total = torch.stack(losses).mean() if losses else zero_loss(self.head.weight)
        out.update(loss=total, itm_loss=total)
        if suspect:
            out["itm_suspect_negatives"] = torch.stack(suspect).mean().detach()
        return out
