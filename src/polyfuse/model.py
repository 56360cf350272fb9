"""The whole model: per-modality encoders -> fusion -> task head, reading a batch dict.

    batch = {"inputs": {column: {..., "modality": m}}, "label": (B,) or (B, K)}
    forward(batch) -> {"logits": (B, K), "pooled": (B, D), "loss": scalar when labels are given}
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Config, SchemaConfig
from .encoders.pretrained import build_encoder
from .fusion import FUSIONS
from .fusion.transformer import init_weights
from .heads import TaskHead


class PolyfuseModel(nn.Module):
    def __init__(self, cfg: Config, schema: SchemaConfig, n_outputs: int, vocab_size: int | None = None,
                 towers: dict | None = None):
        """towers: {modality: TowerSource or InitVectors} from data.pretrained.tower_sources(processors)."""
        super().__init__()
        self.cfg, self.schema = cfg, schema
        self.encoders = nn.ModuleDict({m: build_encoder(m, cfg, vocab_size, (towers or {}).get(m))
                                       for m in schema.modalities()})
        self.fusion = FUSIONS[cfg.model.fusion](cfg, schema.streams())
        self.head = TaskHead(cfg.model.d_model, n_outputs, schema.task or "classification",
                             cfg.train.label_smoothing)
        # Same order (so the same random draws) as init_weights(self), except that an encoder with
        # its own init_weights (pretrained tower, word2vec embeddings) keeps its pretrained values.
        for name, module in self.named_children():
            for sub in (module.values() if name == "encoders" else [module]):
                sub.init_weights() if hasattr(sub, "init_weights") else init_weights(sub)

    def encode(self, inputs: dict, drop: tuple[str, ...] = (), modality_dropout: float = 0.0,
               edit=None) -> dict:
        """Encoders + fusion. `drop` makes whole modalities absent (ablation); modality_dropout, per row.

        A dropped modality is masked exactly like an empty cell, so "without image" means what a
        row without an image means, and a row left with nothing is scored from [CLS] alone.
        `edit(column, encoder_output) -> encoder_output`, when given, changes a column's tokens before
        fusion (pretraining puts a learned mask embedding on masked patches this way).
        """
        encoded = {}
        for col, part in inputs.items():
            m = part["modality"]
            e = self.encoders[m](part)
            if edit is not None:
                e = edit(col, e)
            if m in drop:
                e["mask"] = torch.zeros_like(e["mask"])
            encoded[col] = {**e, "modality": m}
        if modality_dropout > 0:
            encoded = _drop_per_row(encoded, modality_dropout)
        return self.fusion(encoded)

    def forward(self, batch: dict, drop: tuple[str, ...] = (), modality_dropout: float = 0.0) -> dict:
        fused = self.encode(batch["inputs"], drop, modality_dropout)
        if fused.get("late"):
            # Late fusion: one score per present column, averaged over the columns a row has.
            cols = list(fused["per_column_pooled"])
            logits = torch.stack([self.head(fused["per_column_pooled"][c]) for c in cols], 1)   # (B, C, K)
            w = torch.stack([fused["present"][c] for c in cols], 1).to(logits.dtype)[..., None]
            logits = (logits * w).sum(1) / w.sum(1).clamp_min(1.0)
        else:
            logits = self.head(fused["pooled"])
        out = {"logits": logits, "pooled": fused["pooled"], "per_column_pooled": fused["per_column_pooled"]}
        if "label" in batch:
            out["loss"] = self.head.loss(logits, batch["label"])
        return out


def _drop_per_row(encoded: dict, p: float) -> dict:
    """Drop each modality of each row with chance p, never all of a row's modalities."""
    mods = sorted({e["modality"] for e in encoded.values()})
    B = next(iter(encoded.values()))["mask"].shape[0]
    device = next(iter(encoded.values()))["mask"].device
    present = torch.zeros(B, len(mods), dtype=torch.bool, device=device)
    for e in encoded.values():
        present[:, mods.index(e["modality"])] |= e["mask"].any(1)
    keep = (torch.rand(B, len(mods), device=device) >= p) & present
    keep = torch.where(keep.any(1, keepdim=True), keep, present)   # a row that lost everything keeps all
    out = {}
    for col, e in encoded.items():
        mask = e["mask"] & keep[:, mods.index(e["modality"])][:, None]
        out[col] = {**e, "mask": mask}
    return out
