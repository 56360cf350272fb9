"""A trained model with everything it needs to read new rows: config, schema, processors, labels.

The one prediction path: `Predictor.predict(rows) -> Predictions` (label units, from
LabelCodec.predictions). `Polyfuse.predict/predict_proba`, `polyfuse predict`, evaluate, the report and
pruning all call it; the server runs the same model through serving/graph.py and the same
LabelCodec.predictions, so every surface gives the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data.dataset import EncodedSet, encode_table, make_collate
from .data.labels import LabelCodec, Predictions
from .data.manifest import Table, read_table
from .data.processors import Processors
from .errors import InputError, PolyfuseError
from .model import PolyfuseModel, build_model, load_state
from .runfolder import RunFolder, RunMeta
from .util import state_dict_cpu, to_device


class Predictor:
    def __init__(self, cfg: Config, processors: Processors, labels: LabelCodec, model: PolyfuseModel,
                 info: dict | None = None):
        """info: how the model was made (epoch, rows, parameters, pruning), kept in config.json."""
        self.cfg, self.processors, self.labels, self.model = cfg, processors, labels, model
        self.info = dict(info or {})
        self.schema = cfg.schema
        self.collate = make_collate(processors)

    # -- persistence: through RunFolder, which owns the files ------------------------------------
    def save_preprocessing(self, run_dir):
        RunFolder(run_dir).write_preprocessing(self.processors, self.labels)

    def save_weights(self, run_dir, info: dict | None = None):
        """Weights and config.json; `info` is added to what the predictor already says about itself."""
        self.info.update(info or {})
        text = self.processors.text
        meta = RunMeta("supervised", self.cfg, text.vocab_size if text is not None else None,
                       self.labels.n_outputs, dict(self.info))
        RunFolder(run_dir).write_model(state_dict_cpu(self.model), meta)

    def save(self, run_dir, info: dict | None = None):
        self.save_preprocessing(run_dir)
        self.save_weights(run_dir, info)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Predictor":
        folder = RunFolder(run_dir)
        meta = folder.require("supervised", purpose="prediction")
        cfg = meta.config
        processors = folder.processors(cfg)
        labels = folder.labels()
        model = build_model(cfg, processors, meta.n_outputs)
        load_state(model, folder.weights(), folder.file(folder.WEIGHTS))
        model.to(device).eval()
        return cls(cfg, processors, labels, model, meta.info)

    # -- reading rows and predicting ---------------------------------------------------
    def read(self, source, base_dir=None) -> Table:
        return read_inputs(self.schema, source, base_dir)

    def encode(self, table: Table, with_labels: bool = False, on_bad_row: str = "error",
               progress: bool = False) -> EncodedSet:
        return encode_table(table, self.processors, self.labels if with_labels else None, on_bad_row, progress)

    @torch.no_grad()
    def head_outputs(self, data: EncodedSet, drop: tuple[str, ...] = (), batch_size: int = 64) -> np.ndarray:
        """The head's outputs, (N, K): probabilities, or the standardised value (regression)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for i in range(0, len(data), batch_size):
            batch = self.collate(list(range(i, min(i + batch_size, len(data)))), data)
            logits = self.model({"inputs": to_device(batch["inputs"], device)}, drop=drop)["logits"]
            chunks.append(self.model.head.probabilities(logits).cpu().numpy())
        K = self.labels.n_outputs
        return np.concatenate(chunks) if chunks else np.zeros((0, K), dtype=np.float32)

    def predict(self, data: EncodedSet, drop: tuple[str, ...] = (), batch_size: int = 64) -> Predictions:
        """Predictions in label units for every encoded row; `drop` hides whole modalities (ablation)."""
        return self.labels.predictions(self.head_outputs(data, drop, batch_size))


def read_inputs(schema, source, base_dir=None) -> Table:
    """A table to predict for: at least one of the model's input columns must be in it; a missing
    one is a modality absent from every row."""
    table = read_table(source, base_dir)
    missing = [c for c, _ in schema.streams() if c not in table.df.columns]
    if len(missing) == len(schema.streams()):
        raise InputError(f"none of the model's input columns ({', '.join(c for c, _ in schema.streams())}) "
                         f"is in the table", table=table.name)
    for c in missing:
        table.df[c] = None
    return table


def load_pretrainer(run_dir: str | Path, device: str = "cpu"):
    """(config, processors, Pretrainer) of a `polyfuse pretrain` run: encoders, fusion and the
    objectives' heads, rebuilt from the run folder alone (towers from its processors/, never from
    the path they were first loaded from)."""
    from .objectives import Pretrainer, build_objectives
    folder = RunFolder(run_dir)
    cfg = folder.require("pretrained", purpose="loading a pretraining run").config
    processors = folder.processors(cfg)
    model = build_model(cfg, processors, 1)
    pre = Pretrainer(model, build_objectives(cfg, model, processors))
    # Saved: the model's weights without its (untrained) head, and the objectives' under objectives.
    state = {(k if k.startswith("objectives.") else f"model.{k}"): v for k, v in folder.weights().items()}
    missing, unexpected = pre.load_state_dict(state, strict=False)
    # objectives.itm.skill: ITM's running accuracy, a training state that runs saved before it lack.
    missing = [k for k in missing if not k.startswith("model.head.") and k != "objectives.itm.skill"]
    if missing or unexpected:
        raise PolyfuseError(f"{folder.path}: pretrained weights do not match (missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]})")
    return cfg, processors, pre.to(device).eval()
