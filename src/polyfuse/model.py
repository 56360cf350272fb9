"""The whole model: per-modality encoders -> fusion -> task head, reading a batch dict.

    batch = {"inputs": {column: {..., "modality": m}}, "label": (B,) or (B, K)}
    forward(batch) -> {"logits": (B, K), "pooled": (B, D), "per_column": {column: (B, D)}, "balance": {...},
                       "loss" with labels}

Modality balance (model.aux_weight, model.ogm_alpha): trained jointly, a multimodal network leans on
whichever modality fits the training rows fastest and leaves the others half-learned (Wang et al.,
CVPR 2020). Two remedies act in training only. Unimodal auxiliary losses: every row is also fused
from each modality alone, through the same fusion and head, and that prediction's loss is added
(weight aux_weight, averaged over modalities), so each modality learns to predict by itself along
the very path a row missing the others takes. On-the-fly gradient modulation (OGM, Peng et al.,
CVPR 2022) then scales the fused loss's gradient into each encoder by 1 - tanh(alpha * (r - 1)) when
that modality alone is r > 1 times as confident as the others on the batch (confidence: exp(-loss),
the geometric mean of the true labels' probability). Neither adds a weight: predictions and saved
runs are the same shape with or without them.
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
        self.balanced = cfg.model.aux_weight > 0 and len(schema.modalities()) >= 2
        self.ensemble = cfg.model.ensemble and len(schema.modalities()) >= 2
        if self.ensemble:
            # The members' weights: the fused path first, then each modality alone (schema order).
            # Equal until fit_ensemble (training/ensemble.py) sets them from the validation rows;
            # a buffer, so saved runs, export and serving all predict with the fitted ones.
            self.register_buffer("ensemble_weights", torch.ones(1 + len(schema.modalities())))
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
        """{"logits": (B, K), "pooled": (B, D), "per_column": {column: (B, D)}, "balance": {name: scalar},
        "loss" when labels are given}. balance: the auxiliary losses and OGM factors (training only)."""
        encoded = self.encode_columns(batch["inputs"], drop)
        balance, aux_loss = {}, None
        if self.balanced and self.training and "label" in batch:
            # Before modality dropout: each head sees its modality wherever a row has it.
            encoded, aux_loss, balance = self._balance(encoded, batch["label"])
        if modality_dropout > 0:
            encoded = _drop_per_row(encoded, modality_dropout)
        fused = self.fuse(encoded)
        logits = self.head(fused)
        if self.ensemble and not self.training:
            logits = self._ensemble(encoded, logits)
        out = {"logits": logits, "pooled": fused.pooled, "per_column": fused.per_column, "balance": balance}
        if "label" in batch:
            out["loss"] = self.head.loss(logits, batch["label"])
            if aux_loss is not None:
                out["loss"] = out["loss"] + self.cfg.model.aux_weight * aux_loss
        return out

    def _ensemble(self, encoded: dict, fused_logits: torch.Tensor) -> torch.Tensor:
        """(B, K): the weighted mean of the fused logits and each present modality's own (fused alone).

        For classes and labels, averaging logits is a (tempered) product of the experts'
        probabilities: a modality that is sure outweighs one that is unsure, whichever it is,
        which a single fused pass trained on rows where one modality was always right does not
        learn (a held-out speaker's audio). The weights say how far each member is trusted on
        rows the model did not train on. Tensor-only, so export traces it as it is."""
        logits, has = self.members(encoded, fused_logits)                  # (M, B, K), (M, B)
        return weighted_mean(logits, has, self.ensemble_weights)

    def members(self, encoded: dict, fused_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's members: logits (M, B, K) of the fused path and of each modality alone
        (zeros where a row lacks it), and (M, B) which rows each member may speak for."""
        B = fused_logits.shape[0]
        logits = [fused_logits]
        has = [torch.ones(B, dtype=torch.bool, device=fused_logits.device)]
        present = {m: (alone, rows) for m, alone, rows in self._each_modality(encoded)}
        for m in self.schema.modalities():
            if m in present:
                alone, rows = present[m]
                logits.append(self.head(self.fuse(alone)))
                has.append(rows)
            else:
                logits.append(torch.zeros_like(fused_logits))
                has.append(torch.zeros_like(has[0]))
        return torch.stack(logits), torch.stack(has)

    def _each_modality(self, encoded: dict):
        """(modality, its columns, (B,) rows that have it), for each modality in the batch."""
        for m in self.schema.modalities():
            alone = {c: e for c, e in encoded.items() if e["modality"] == m}
            if alone:
                yield m, alone, torch.stack([e["mask"].any(1) for e in alone.values()]).any(0)

    def _balance(self, encoded: dict, y: torch.Tensor) -> tuple[dict, torch.Tensor, dict]:
        """The unimodal losses' mean, and the encoded columns with OGM's gradient factors applied."""
        losses, confidence = {}, {}
        for m, alone, has in self._each_modality(encoded):
            if not bool(has.any()):
                continue
            logits = self.head(self.fuse(alone))                                                   # (B, K)
            losses[m] = self.head.loss(logits[has], y[has])
            confidence[m] = torch.exp(-losses[m].detach().float())
        balance = {f"aux_{m}_loss": v.detach() for m, v in losses.items()}
        alpha = self.cfg.model.ogm_alpha
        if alpha > 0 and len(confidence) >= 2:
            factors = {}
            for m, c in confidence.items():
                others = torch.stack([v for o, v in confidence.items() if o != m]).mean()
                factors[m] = 1 - torch.tanh(alpha * torch.relu(c / others.clamp_min(1e-6) - 1))
                balance[f"ogm_{m}"] = factors[m]
            encoded = {col: {**e, "tokens": scale_grad(e["tokens"], factors[e["modality"]])}
                       if e["modality"] in factors else e for col, e in encoded.items()}
        aux = torch.stack(list(losses.values())).mean() if losses else None
        return encoded, aux, balance


def weighted_mean(logits: torch.Tensor, has: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, K): members' logits (M, B, K) averaged with weights (M,) over the members each row has (M, B)."""
    w = weights.to(logits.dtype)[:, None] * has.to(logits.dtype)                           # (M, B)
    return (w[..., None] * logits).sum(0) / w.sum(0)[:, None].clamp_min(1e-12)


def build_model(cfg: Config, processors, n_outputs: int, pretrained_weights: bool = False) -> PolyfuseModel:
    """The model a run's processors call for: vocabulary size and tower architectures come from them.

    pretrained_weights=True (training) loads each tower's configured checkpoint; False (reloading a
    run) builds the towers from the run's processors/ and leaves the weights to model.safetensors.
    """
    text = processors.text
    return PolyfuseModel(cfg, cfg.schema, n_outputs, text.vocab_size if text is not None else None,
                         towers=tower_sources(processors, pretrained_weights))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor.to(grad.dtype), None


def scale_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _ScaleGrad.apply(x, factor.detach())


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
