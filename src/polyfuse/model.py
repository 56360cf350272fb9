"""The whole model: per-modality encoders -> fusion -> task head, reading a batch dict.

    batch = {"inputs": {column: {..., "modality": m}}, "label": (B,) or (B, K)}
    forward(batch) -> {"logits": (B, K), "pooled": (B, D), "per_column": {column: (B, D)}, "loss" with labels}
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Config, SchemaConfig
from .data.pretrained import tower_sources
from .encoders import Encoder, build_encoder
from .fusion import FUSIONS, Fused
from .errors import PolyfuseError
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
        # Same order (so the same random draws) as init_weights(self), except that an encoder keeps
        # what it already holds where it has pretrained values (tower, word2vec embeddings).
        for name, module in self.named_children():
            for sub in (module.values() if name == "encoders" else [module]):
                sub.init_weights() if isinstance(sub, Encoder) else init_weights(sub)

    def encode_columns(self, inputs: dict, drop: tuple[str, ...] = (), modality_dropout: float = 0.0) -> dict:
        """Each column through its modality's encoder: {column: {"tokens": (B, T_c, D), "mask": (B, T_c), "modality"}}.

        `drop` makes whole modalities absent (ablation); modality_dropout, per row. A dropped
        modality is masked exactly like an empty cell, so "without image" means what a row without
        an image means, and a row left with nothing is scored from [CLS] alone. Pretraining calls
        this once per step and fuses subsets of the result (see objectives/).
        """
        encoded = {}
        for col, part in inputs.items():
            m = part["modality"]
            e = self.encoders[m](part)
            if m in drop:
                e = {**e, "mask": torch.zeros_like(e["mask"])}
            encoded[col] = {**e, "modality": m}
        if modality_dropout > 0:
            encoded = _drop_per_row(encoded, modality_dropout)
        return encoded

    def fuse(self, encoded: dict) -> Fused:
        return self.fusion(encoded)

    def encode(self, inputs: dict, drop: tuple[str, ...] = (), modality_dropout: float = 0.0) -> Fused:
        return self.fuse(self.encode_columns(inputs, drop, modality_dropout))

    def forward(self, batch: dict, drop: tuple[str, ...] = (), modality_dropout: float = 0.0) -> dict:
        """{"logits": (B, K), "pooled": (B, D), "per_column": {column: (B, D)}, "loss" when labels are given}."""
        fused = self.encode(batch["inputs"], drop, modality_dropout)
        logits = self.head(fused)
        out = {"logits": logits, "pooled": fused.pooled, "per_column": fused.per_column}
        if "label" in batch:
            out["loss"] = self.head.loss(logits, batch["label"])
        return out


def build_model(cfg: Config, processors, n_outputs: int, pretrained_weights: bool = False) -> PolyfuseModel:
    """The model a run's processors call for: vocabulary size and tower architectures come from them.

    pretrained_weights=True (training) loads each tower's configured checkpoint; False (reloading a
    run) builds the towers from the run's processors/ and leaves the weights to model.safetensors.
    """
    text = processors.text
    return PolyfuseModel(cfg, cfg.schema, n_outputs, text.vocab_size if text is not None else None,
                         towers=tower_sources(processors, pretrained_weights))


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


def load_state(model: nn.Module, state: dict, where) -> None:
    """Load weights that must match the model one to one; a mismatch names what differs."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PolyfuseError(f"{where}: weights do not match the model (missing: {missing[:10]}, "
                            f"unexpected: {unexpected[:10]})")
