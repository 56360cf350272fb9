"""Self-supervised objectives for pretraining on unlabeled rows.

Each objective declares what it needs (`Needs`: columns, modalities, fused tokens, Polyfuse's own
encoders), so `resolve_objectives` can refuse a config before training instead of failing in
step one. `Pretrainer` runs the chosen ones on a batch and sums their losses with weights.

One step encodes the batch once (`Step.clean`, every column through its encoder). Contrastive fuses
each column alone from those outputs. Then one joint fused pass (`Step.joint`) serves ITM, MLM and
masked patch modelling together: its rows are the batch re-paired by ITM (about half get one cell
from another row: the negatives) with the masking objectives' corruptions applied, so only the
corrupted columns are encoded again. Per step: each encoder twice at most (clean, corrupted), each
column fused alone once (contrastive), and one joint pass of B rows.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import OBJECTIVES, Config, is_tower
from ..errors import ConfigError
from .common import Needs, Step, take
from .contrastive import Contrastive
from .itm import ITM
from .masked_patch import MaskedPatch
from .mlm import MLM

CLASSES = {"contrastive": Contrastive, "itm": ITM, "mlm": MLM, "masked_patch": MaskedPatch}


def why_not(name: str, cfg: Config) -> str | None:
    """Why objective `name` cannot train with this config and schema, or None when it can."""
    needs: Needs = CLASSES[name].needs
    streams = cfg.schema.streams()
    if len(streams) < needs.columns:
        return f"needs {needs.columns} input columns; the schema has {len(streams)}"
    if needs.modalities:
        usable = [m for m in needs.modalities if getattr(cfg.schema, m)
                  and not (needs.own_encoder and is_tower(getattr(cfg, m).encoder))]
        if not usable:
            what = " or ".join(needs.modalities)
            own = " read by Polyfuse's own encoder (not a pretrained tower)" if needs.own_encoder else ""
            return f"needs a {what} column{own}"
    if needs.fused_tokens and cfg.model.fusion != "attention":
        return f"reads the fused token sequence, which {cfg.model.fusion} fusion does not have: use --fusion attention"
    return None


def resolve_objectives(cfg: Config) -> Config:
    """cfg with pretrain.objectives filled in (every one the config allows, when not given) and
    checked against the schema, the encoders and the fusion. Raises ConfigError naming the reason."""
    pcfg = cfg.pretrain
    if pcfg.objectives is None:
        chosen = [o for o in OBJECTIVES if why_not(o, cfg) is None]
        if not chosen:
            raise ConfigError("no pretraining objective fits this table: "
                              + "; ".join(f"{o} {why_not(o, cfg)}" for o in OBJECTIVES))
    else:
        chosen = [o for o in OBJECTIVES if o in pcfg.objectives]     # run in OBJECTIVES order
        for o in chosen:
            if (reason := why_not(o, cfg)) is not None:
                raise ConfigError(f"objective '{o}' {reason}")
    not_run = [w for w in pcfg.weights if w not in chosen]
    if not_run:
        raise ConfigError(f"weights given for objective(s) not run: {not_run}")
    if pcfg.lock_towers and "contrastive" not in chosen:
        raise ConfigError("lock_towers changes the contrastive objective; add it to --objectives")
    if pcfg.match_column is not None and not {"contrastive", "itm"} & set(chosen):
        raise ConfigError("pretrain.match_column marks rows that are not each other's negatives; "
                          "it needs the contrastive or itm objective")
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(pcfg, objectives=chosen))


def parse_weights(text: str | None) -> dict:
    """'mlm=1,itm=0.5' -> {'mlm': 1.0, 'itm': 0.5}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--weights expects NAME=NUMBER,..., got {item!r}") from None
        if not sep:
            raise ConfigError(f"--weights expects NAME=NUMBER,..., got {item!r}")
    return out


def build_objectives(cfg: Config, model, processors) -> dict:
    """{name: objective module} for cfg.pretrain.objectives (resolve_objectives has checked them)."""
    pcfg, D, streams = cfg.pretrain, cfg.model.d_model, cfg.schema.streams()
    made = {}
    for name in (o for o in OBJECTIVES if o in pcfg.objectives):
        if name == "contrastive":
            made[name] = Contrastive(D, streams, pcfg.proj_dim, pcfg.temperature, locked_towers(cfg, model),
                                     pooled_towers(cfg, model))
        elif name == "itm":
            made[name] = ITM(D, pcfg.hard_negatives)
        elif name == "masked_patch":
            own = [m for m in ("image", "audio") if getattr(cfg.schema, m) and not is_tower(getattr(cfg, m).encoder)]
            made[name] = MaskedPatch(cfg, own, pcfg.mask_ratio)
        else:
            text = processors.text
            made[name] = MLM(D, text.vocab_size, text.mask_id, first_normal_id=5, prob=pcfg.mlm_prob)
    return made


def locked_towers(cfg: Config, model) -> dict:
    """{column: tower width} of the columns whose frozen pretrained tower embeds them alone."""
    streams = cfg.schema.streams()
    if not cfg.pretrain.lock_towers:
        return {}
    named = cfg.pretrain.lock_columns
    unknown = [c for c in named or [] if c not in dict(streams)]
    if unknown:
        raise ConfigError(f"pretrain.lock_columns: {unknown} are not columns of this run "
                          f"({', '.join(c for c, _ in streams)})")
    thawed = [c for c, m in streams if c in (named or []) and not model.encoders[m].fully_frozen]
    if thawed:
        raise ConfigError(f"pretrain.lock_columns: {thawed} are not read by a fully frozen pretrained tower "
                          "(--freeze-encoders, no --unfreeze-top or --lora)")
    locked = {c: model.encoders[m].feature_width for c, m in streams
              if model.encoders[m].fully_frozen and (named is None or c in named)}
    if not locked:
        raise ConfigError("lock_towers needs a frozen pretrained tower, e.g. --text-encoder PATH --freeze-encoders")
    if len(locked) == len(streams):
        raise ConfigError("lock_towers with every column on a frozen tower leaves nothing to train: "
                          "name the column(s) to lock, e.g. --lock-towers text")
    return locked


def pooled_towers(cfg: Config, model) -> dict:
    """{column: tower width} of pretrain.pooled_columns (each must be read by a pretrained tower)."""
    streams = dict(cfg.schema.streams())
    out = {}
    for col in cfg.pretrain.pooled_columns:
        if col not in streams:
            raise ConfigError(f"pretrain.pooled_columns: '{col}' is not a column of this run ({', '.join(streams)})")
        if not is_tower(getattr(cfg, streams[col]).encoder):
            raise ConfigError(f"pretrain.pooled_columns: '{col}' is not read by a pretrained tower")
        out[col] = model.encoders[streams[col]].feature_width
    return out


class Pretrainer(nn.Module):
    """The model plus its objectives; forward(batch) -> {"loss": weighted sum, "<name>_loss": ...}."""

    def __init__(self, model: nn.Module, objectives: dict, weights: dict | None = None):
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in objectives}

    def forward(self, batch: dict) -> dict:
        inputs = batch["inputs"]
        step = Step(inputs, self.model.encode_columns(inputs), batch.get("group"))
        state, out, parts = {}, {}, []

        def run(name, objective):
            losses = objective(self.model, step, state)
            parts.append(self.weights[name] * losses.pop("loss"))
            out.update(losses)

        # Objectives on each column alone (contrastive) first: ITM draws its hard negatives from
        # their similarities before the joint pass is assembled.
        for name, objective in self.objectives.items():
            if not objective.joint:
                run(name, objective)
        joint = [(n, o) for n, o in self.objectives.items() if o.joint]
        if joint:
            if "itm" in self.objectives:
                step.pairing = self.objectives["itm"].pair(step, state)
            self.joint_pass(step, [(n, o) for n, o in joint if o.masks])
            for name, objective in joint:
                run(name, objective)
        out["loss"] = torch.stack(parts).sum()
        return out

    def joint_pass(self, step: Step, masking: list):
        """The one fused pass over all columns that ITM, MLM and masked patch read: rows re-paired as
        ITM drew them (its negatives), with every masking objective's corruption applied (MLM's
        hidden words and masked_patch's hidden patches together). Only corrupted columns are
        encoded again; the others reuse the clean encoder outputs, re-indexed."""
        inputs, clean = step.inputs, step.clean
        if step.pairing is not None:
            index = step.pairing.index
            inputs = {c: take(p, index[c]) for c, p in inputs.items()}
            clean = {c: take(e, index[c]) for c, e in clean.items()}
        parts, contexts = {}, {}
        for name, objective in masking:
            changed, contexts[name] = objective.corrupt(inputs)
            parts.update(changed)
        encoded = {**clean, **self.model.encode_columns(parts)}
        for name, objective in masking:
            encoded = objective.edit(encoded, contexts[name])
        step.joint, step.joint_inputs, step.masked = self.model.fuse(encoded), inputs, contexts

    def encoder_state(self) -> dict:
        """Weights to save: the model without its (unused) head, and the objectives' own."""
        model = {k: v for k, v in self.model.state_dict().items() if not k.startswith("head.")}
        objectives = {f"objectives.{k}": v for k, v in self.objectives.state_dict().items()}
        return {**model, **objectives}


__all__ = ["OBJECTIVES", "CLASSES", "Pretrainer", "Step", "build_objectives", "parse_weights",
           "resolve_objectives", "why_not", "Contrastive", "ITM", "MLM", "MaskedPatch"]
