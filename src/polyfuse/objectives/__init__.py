"""Self-supervised objectives for pretraining on unlabeled rows.

Each objective is an nn.Module called as `objective(model, inputs, state) -> {"loss": scalar,
"<name>_loss": scalar, ...more named values}`; `Pretrainer` runs the chosen ones on a batch and sums
their losses with weights. `state` lets one objective hand results to a later one (contrastive's
similarities become ITM's hard negatives), so contrastive runs first.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .contrastive import Contrastive
from .itm import ITM
from .masked_patch import MaskedPatch
from .mlm import MLM

OBJECTIVES = ("contrastive", "itm", "mlm", "masked_patch")    # the order they run in


@dataclass
class PretrainConfig:
    objectives: list[str] | None = None          # None: every objective the columns allow
    weights: dict = field(default_factory=dict)   # objective -> weight; unnamed ones weigh 1
    mlm_prob: float = 0.15                        # share of text tokens hidden (BERT)
    mask_ratio: float = 0.5                       # share of image patches / audio tokens hidden
    proj_dim: int = 128                           # contrastive projection width
    temperature: float = 0.07                     # contrastive temperature at the start (learned)
    hard_negatives: bool = True                   # ITM negatives from contrastive similarity
    lock_towers: bool = False                     # contrastive: frozen towers embed their columns alone (LiT)

    def validate(self, schema) -> "PretrainConfig":
        """Check against the table's schema; fills in `objectives` when it was left to the columns."""
        needs = applicable(schema)
        if self.objectives is None:
            self.objectives = [o for o in OBJECTIVES if needs[o]]
        unknown = [o for o in self.objectives + list(self.weights) if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ConfigError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
        not_run = [w for w in self.weights if w not in self.objectives]
        if not_run:
            raise ConfigError(f"weights given for objective(s) not run: {not_run}")
        why = {"mlm": "a text column", "masked_patch": "an image or audio column",
               "contrastive": "two input columns", "itm": "two input columns"}
        for o in self.objectives:
            if not needs[o]:
                raise ConfigError(f"objective '{o}' needs {why[o]}; the schema has {schema.streams()}")
        for name in ("mlm_prob", "mask_ratio"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.lock_towers and "contrastive" not in self.objectives:
            raise ConfigError("lock_towers changes the contrastive objective; add it to --objectives")
        if self.temperature <= 0 or self.proj_dim <= 0:
            raise ConfigError("temperature and proj_dim must be > 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def applicable(schema) -> dict:
    """objective -> whether a table with these columns can train it."""
    mods, n_cols = set(schema.modalities()), len(schema.streams())
    return {"mlm": "text" in mods, "masked_patch": bool({"image", "audio"} & mods),
            "contrastive": n_cols >= 2, "itm": n_cols >= 2}


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


def build_objectives(pcfg: PretrainConfig, cfg, model, processors) -> dict:
    D, streams = cfg.model.d_model, cfg.schema.streams()
    made = {}
    for name in (o for o in OBJECTIVES if o in pcfg.objectives):
        if name == "contrastive":
            made[name] = Contrastive(D, streams, pcfg.proj_dim, pcfg.temperature, locked_towers(pcfg, model, streams))
        elif name == "itm":
            made[name] = ITM(D, pcfg.hard_negatives)
        elif name == "masked_patch":
            made[name] = MaskedPatch(cfg, cfg.schema.modalities(), pcfg.mask_ratio)
        else:
            if not hasattr(model.encoders["text"], "tok"):
                raise ConfigError("mlm predicts the ids of Polyfuse's own text tokenizer; it needs the "
                                  "scratch text encoder, not a pretrained text tower")
            text = processors.text
            made[name] = MLM(D, text.vocab_size, text.mask_id, first_normal_id=5, prob=pcfg.mlm_prob,
                             tied=hasattr(model.encoders["text"], "tok"))
    return made


def locked_towers(pcfg: PretrainConfig, model, streams) -> dict:
    """{column: tower width} of the columns whose frozen pretrained tower embeds them alone."""
    if not pcfg.lock_towers:
        return {}
    locked = {c: model.encoders[m].proj.in_features for c, m in streams
              if getattr(model.encoders[m], "fully_frozen", False)}
    if not locked:
        raise ConfigError("lock_towers needs a frozen pretrained tower, e.g. --text-encoder PATH --freeze-encoders")
    if len(locked) == len(streams):
        raise ConfigError("lock_towers with every column on a frozen tower leaves nothing to train")
    return locked


class Pretrainer(nn.Module):
    """The model plus its objectives; forward(batch) -> {"loss": weighted sum, "<name>_loss": ...}."""

    def __init__(self, model: nn.Module, objectives: dict, weights: dict | None = None):
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in objectives}

    def forward(self, batch: dict, modality_dropout: float = 0.0) -> dict:
        inputs, state, out = batch["inputs"], {}, {}
        total = None
        for name, objective in self.objectives.items():
            losses = objective(self.model, inputs, state)
            part = self.weights[name] * losses.pop("loss")
            total = part if total is None else total + part
            out.update(losses)
        out["loss"] = total
        return out

    def encoder_state(self) -> dict:
        """Weights to save: the model without its (unused) head, and the objectives' own."""
        model = {k: v for k, v in self.model.state_dict().items() if not k.startswith("head.")}
        objectives = {f"objectives.{k}": v for k, v in self.objectives.state_dict().items()}
        return {**model, **objectives}


__all__ = ["OBJECTIVES", "PretrainConfig", "Pretrainer", "build_objectives", "parse_weights",
           "Contrastive", "ITM", "MLM", "MaskedPatch"]
