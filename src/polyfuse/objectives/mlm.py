"""Masked language modelling over the fused sequence: text tokens are hidden and predicted with the
other modalities in view, so text is reconstructed with their help. It shares one corrupted pass
with masked patch modelling when both run (the other modalities are then partly hidden too, as in
FLAVA's masked multimodal modelling). Only the chosen positions are scored."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import Needs, Step, random_selection, zero_loss

IGNORE = -100


def mask_tokens(ids: torch.Tensor, real: torch.Tensor, prob: float, mask_id: int, vocab_size: int,
                first_normal_id: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption. Of the real tokens, `prob` are chosen (at least one per row that has text);
    of those 80% become [MASK], 10% a random ordinary token, 10% stay. Returns (new ids, labels),
    labels IGNORE everywhere but the chosen positions."""
    chosen = random_selection(real, prob, generator)                          # (B, T)
    labels = ids.masked_fill(~chosen, IGNORE)
    r = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(first_normal_id, vocab_size, ids.shape, generator=generator).to(ids.device)
    new = torch.where(chosen & (r < 0.8), torch.full_like(ids, mask_id), ids)
    new = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, new)
    return new, labels


class MLM(nn.Module):
    name, masks, joint = "mlm", True, True
    needs = Needs(modalities=("text",), own_encoder=True, fused_tokens=True)

    def __init__(self, d_model: int, vocab_size: int, mask_id: int, first_normal_id: int, prob: float):
        super().__init__()
        self.vocab_size, self.mask_id, self.first_normal_id, self.prob = vocab_size, mask_id, first_normal_id, prob
        self.transform = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model))
        # The decoder is tied to the text encoder's token embedding (fewer parameters, better
        # small-data transfer); the encoder is passed at call time so its weight is not saved twice.
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def logits(self, h: torch.Tensor, model) -> torch.Tensor:
        return F.linear(self.transform(h), model.encoders["text"].token_embedding.weight, self.bias)   # (..., V)

    def corrupt(self, inputs: dict) -> tuple[dict, dict]:
        """({text column: part with BERT-corrupted ids}, {text column: labels (B, T), IGNORE elsewhere})."""
        parts, labels = {}, {}
        for c in (c for c, p in inputs.items() if p["modality"] == "text"):
            ids, labels[c] = mask_tokens(inputs[c]["ids"], inputs[c]["mask"], self.prob, self.mask_id,
                                         self.vocab_size, self.first_normal_id)
            parts[c] = {**inputs[c], "ids": ids}
        return parts, labels

    def edit(self, encoded: dict, labels: dict) -> dict:
        return encoded          # [MASK] ids are the whole corruption

    def forward(self, model, step: Step, state: dict) -> dict:
        fused, labels = step.joint, step.masked[self.name]
        hs, ys = [], []
        for c, lab in labels.items():
            a, b = fused.spans[c]
            pick = lab != IGNORE                                            # (B, T_c)
            hs.append(fused.tokens[:, a:b][pick])
            ys.append(lab[pick])
        if not hs or sum(len(y) for y in ys) == 0:
            loss = zero_loss(self.bias)
            return {"loss": loss, "mlm_loss": loss}
        h, y = torch.cat(hs), torch.cat(ys)
        logits = self.logits(h, model).float()
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean().detach()
        return {"loss": loss, "mlm_loss": loss, "mlm_accuracy": acc}
