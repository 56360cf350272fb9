"""Matching (image-text matching, for any columns): do a row's cells belong together? Scored from [CLS].

Each step about half of the rows (`share`) become negatives: one of their present cells, chosen by
a coin among the row's columns, is swapped for another row's cell of that column. With the
contrastive objective on, a share of the swaps is drawn in proportion to softmax(similarity between
the swapped-in cell and the row's other cells): hard negatives, the pairs the embeddings confuse
most; the rest are uniform within the batch. That share is the smaller of how well the embeddings
separate the batch's pairs (top-1 accuracy) and how far matching itself is above chance (2 x its
running accuracy - 1), so hard negatives grow as both learn. Held-out rows are asked with uniform
negatives (`val_itm_auc`). Rows with fewer than
two cells are not scored. Loss: binary cross-entropy.

Matching adds no fused pass of its own: the re-paired rows are the rows of the step's one joint
pass (`Pretrainer.joint_pass`), which masked language and patch modelling read too. So a positive
is a real row with some content hidden, and a negative is the same with one cell from elsewhere:
both are asked alike, and the masked objectives learn on every row (on a negative the swapped
cell still reconstructs from its own visible part).

Hard negatives assume one true partner per row. Where several rows match (a many-to-many pairing:
any image of a 7 matches any spoken 7) the hardest "negatives" are true matches, and ITM sits at
chance (ln 2). `pretrain.match_column` names the column whose equal values mark such rows: they are
never drawn as each other's negatives (here or in contrastive). Without it, the logged
`itm_suspect_negatives` (negatives rated at least as similar as the true cell) shows the problem.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .common import Needs, Step, present, same_group, zero_loss

# Momentum of ITM's running training accuracy (`skill`): about the last 50 steps.
SKILL_MOMENTUM = 0.98


@dataclass
class Pairing:
    """How the joint pass re-pairs a batch: row i of the pass holds, for each column c, the cell of row index[c][i]."""
    index: dict[str, torch.Tensor]     # {column: (B,) long}
    labels: torch.Tensor               # (B,) 1.0 all cells from one row, 0.0 one cell swapped in
    scored: torch.Tensor               # (B,) bool: rows with at least two cells, the ones matching asks about
    suspect: torch.Tensor | None       # () share of negatives rated at least as similar as the true cell


def pair_similarity(sims: dict, r: str, c: str) -> torch.Tensor | None:
    """(B, B) similarity of column r's cell of row i to column c's cell of row j, from contrastive."""
    if (r, c) in sims:
        return sims[(r, c)]
    return sims[(c, r)].T if (c, r) in sims else None


def draw_partners(rows: torch.Tensor, has: torch.Tensor, scores: torch.Tensor | None, generator=None,
                  exclude: torch.Tensor | None = None, hard_share: float = 1.0) -> torch.Tensor:
    """For each row i in `rows`, a row j != i whose cell exists (has[j]) to swap in, or -1 when none
    can be. scores (B, B), when given, weights j by softmax(scores[i]) for a `hard_share` of the rows
    (the others draw uniformly); exclude (B, B) marks known matches (same match group), never drawn."""
    B = len(has)
    cand = has[None, :].expand(len(rows), B).clone()                       # (R, B)
    cand[torch.arange(len(rows)), rows] = False
    if exclude is not None:
        cand &= ~exclude[rows]
    logits = torch.zeros(len(rows), B, device=has.device)
    if scores is not None:
        hard = (torch.rand(len(rows), generator=generator) < hard_share).to(has.device)
        logits[hard] = scores[rows[hard]].float()
    logits = logits.masked_fill(~cand, float("-inf"))
    j = torch.full((len(rows),), -1, dtype=torch.long, device=has.device)
    ok = cand.any(1)
    if ok.any():
        j[ok] = torch.multinomial(logits[ok].softmax(-1).cpu(), 1, generator=generator).squeeze(1).to(has.device)
    return j


def pair_rows(present: dict, sims: dict | None = None, share: float = 0.5, generator=None,
              exclude: torch.Tensor | None = None, hard_share: float = 1.0) -> Pairing:
    """present {column: (B,) bool}; sims {(a, b): (B, B)} from contrastive (None or missing: uniform);
    hard_share: the share of negatives drawn by similarity, the others uniformly."""
    cols = list(present)
    P = torch.stack([present[c] for c in cols], 1)                            # (B, C)
    B, device = P.shape[0], P.device
    rows = torch.arange(B, device=device)
    scored = P.sum(1) >= 2
    index = {c: rows.clone() for c in cols}
    labels = torch.ones(B, device=device)
    negative = scored & (torch.rand(B, generator=generator).to(device) < share)
    swap = torch.full((B,), -1, dtype=torch.long, device=device)
    if negative.any():
        swap[negative] = torch.multinomial(P[negative].float().cpu(), 1, generator=generator).squeeze(1).to(device)
    suspect = []
    for k, c in enumerate(cols):
        mine = rows[swap == k]
        if len(mine) == 0:
            continue
        # How like the row's other cells each candidate cell is: the mean similarity to them.
        parts = [(present[r].float()[:, None], s) for r in cols if r != c
                 if (s := pair_similarity(sims or {}, r, c)) is not None]
        scores = None
        if parts:
            weight = sum(w for w, _ in parts).clamp_min(1.0)
            scores = sum(w * s for w, s in parts) / weight                           # (B, B)
        j = draw_partners(mine, present[c], scores, generator, exclude, hard_share)
        got = j >= 0
        index[c][mine[got]] = j[got]
        labels[mine[got]] = 0.0
        if scores is not None and got.any():
            i = mine[got]
            suspect.append(scores[i, j[got]] >= scores[i, i])
    suspect_share = torch.cat(suspect).float().mean() if suspect else None
    return Pairing(index, labels, scored, suspect_share)


class ITM(nn.Module):
    name, masks, joint = "itm", False, True
    needs = Needs(columns=2)

    def __init__(self, d_model: int, hard_negatives: bool = True, share: float = 0.5):
        super().__init__()
        self.hard_negatives, self.share = hard_negatives, share
        self.head = nn.Linear(d_model, 1)
        # Running accuracy of matching on the training pairs it was asked (EMA): a buffer, so it is
        # saved, resumed and, under DDP, broadcast like the weights.
        self.register_buffer("skill", torch.tensor(0.5))

    def pair(self, step: Step, state: dict) -> Pairing:
        """This step's re-pairing of the batch (before the joint pass is fused)."""
        pres = {c: present(p) for c, p in step.inputs.items()}
        B = len(next(iter(pres.values())))
        device = next(iter(pres.values())).device
        exclude = same_group(step.groups, B, device) if step.groups is not None else None
        # Validation (eval mode) asks with uniform negatives: hard ones follow the contrastive
        # embeddings, so their loss would measure a harder test each epoch, and chance (ln 2) on hard
        # negatives hides whether matching learned anything (val_itm_auc, recipes/pretrain.py).
        sims = state.get("similarity") if self.hard_negatives and self.training else None
        # Hard negatives only as far as the embeddings separate pairs: drawn by similarity from the
        # first step, they are no harder than random ones yet often true look-alikes, and ITM sat at
        # chance (docs/benchmarks.md); a many-to-many pairing keeps separation, and so hardness, low.
        separation = state.get("separation", {})
        hard = sum(separation.values()) / len(separation) if separation else 1.0
        # ...and only as far as matching itself is above chance (2 * accuracy - 1): contrastive
        # memorises the training pairs within a few epochs (separation -> 1), and on emoji, with
        # every negative hard from then on (a skin-tone variant, a near-identical flag), matching
        # never got off chance (train loss 0.665 after 23 epochs; with uniform negatives 0.41).
        # Asked harder pairs only while it answers well, it holds itself near its own limit.
        hard = min(hard, max(0.0, 2.0 * float(self.skill) - 1.0))
        if sims is not None:
            state["itm_hard_share"] = hard
        return pair_rows(pres, sims, self.share, exclude=exclude, hard_share=hard)

    def forward(self, model, step: Step, state: dict) -> dict:
        pairing, fused = step.pairing, step.joint
        ok = pairing.scored
        if not ok.any():
            loss = zero_loss(self.head.weight)
            return {"loss": loss, "itm_loss": loss}
        logit = self.head(fused.pooled[ok]).squeeze(-1).float()               # (N,)
        labels = pairing.labels[ok]
        loss = F.binary_cross_entropy_with_logits(logit, labels)
        accuracy = ((logit > 0).float() == labels).float().mean().detach()
        if self.training:
            self.skill.mul_(SKILL_MOMENTUM).add_((1 - SKILL_MOMENTUM) * accuracy)
        out = {"loss": loss, "itm_loss": loss, "itm_accuracy": accuracy}
        if "itm_hard_share" in state:
            out["itm_hard_share"] = torch.tensor(state["itm_hard_share"])
        if pairing.suspect is not None:
            out["itm_suspect_negatives"] = pairing.suspect.detach()
        if not self.training:       # per-row scores for the held-out AUC
            out["itm_logits"], out["itm_labels"] = logit.detach(), labels
        return out
