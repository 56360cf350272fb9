"""A trained model with everything it needs to read new rows: config, schema, processors, labels.

The same object serves training's final save, `polyfuse.load`, evaluate, predict and serving, so
preprocessing is identical everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data.dataset import EncodedSet, encode_table, make_collate
from .data.labels import LabelCodec
from .data.manifest import Table, read_table
from .data.pretrained import tower_sources
from .data.processors import Processors
from .errors import InputError, PolyfuseError
from .model import PolyfuseModel
from .training.checkpoint import atomic_save_tensors, atomic_write_text, load_weights
from .training.loop import to_device

FORMAT_VERSION = 1


class Predictor:
    def __init__(self, cfg: Config, processors: Processors, labels: LabelCodec, model: PolyfuseModel):
        self.cfg, self.processors, self.labels, self.model = cfg, processors, labels, model
        self.schema = cfg.schema
        self.collate = make_collate(processors)

    # -- persistence -----------------------------------------------------------------
    def save_preprocessing(self, run_dir: Path):
        """Processors, label map and schema: written once, before training starts."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.processors.save(run_dir / "processors")
        atomic_write_text(run_dir / "labels.json", json.dumps(self.labels.to_dict(), indent=2))
        atomic_write_text(run_dir / "schema.json", json.dumps(
            {"text": self.schema.text, "image": self.schema.image, "audio": self.schema.audio,
             "label": self.schema.label, "task": self.schema.task}, indent=2))

    def save_weights(self, run_dir: Path, extra: dict | None = None):
        """Weights, then config.json last: the file whose presence says the folder holds a finished model."""
        atomic_save_tensors(run_dir / "model.safetensors", self.model.state_dict(),
                            metadata={"format": "polyfuse", "format_version": str(FORMAT_VERSION)})
        body = {"format_version": FORMAT_VERSION, "config": self.cfg.to_dict(),
                "vocab_size": self.processors.text.vocab_size if self.processors.text else None,
                "n_outputs": self.labels.n_outputs, **(extra or {})}
        atomic_write_text(run_dir / "config.json", json.dumps(body, indent=2))

    def save(self, run_dir: str | Path, extra: dict | None = None):
        run_dir = Path(run_dir)
        self.save_preprocessing(run_dir)
        self.save_weights(run_dir, extra)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Predictor":
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists() or not (run_dir / "model.safetensors").exists():
            raise PolyfuseError(f"{run_dir} is not a finished Polyfuse run folder (no config.json/model.safetensors; "
                                "was training interrupted before its first epoch ended?)")
        meta = json.loads((run_dir / "config.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise PolyfuseError(f"{run_dir}: format version {meta.get('format_version')} is not supported")
        if meta.get("kind") == "pretrained":
            raise PolyfuseError(f"{run_dir} is a pretraining run (encoders, no task head): fine-tune it with "
                                f"`polyfuse train --init-from {run_dir} ...`")
        cfg = Config.from_dict(meta["config"])
        processors = Processors.load(cfg, cfg.schema, run_dir / "processors")
        labels = LabelCodec.load(run_dir / "labels.json")
        model = PolyfuseModel(cfg, cfg.schema, meta["n_outputs"], meta["vocab_size"], towers=tower_sources(processors))
        load_weights(model, run_dir / "model.safetensors")
        model.to(device).eval()
        return cls(cfg, processors, labels, model)

    # -- reading rows and predicting ---------------------------------------------------
    def read(self, source, base_dir=None) -> Table:
        table = read_table(source, base_dir)
        missing = [c for c, _ in self.schema.streams() if c not in table.df.columns]
        if len(missing) == len(self.schema.streams()):
            raise InputError(f"none of the model's input columns ({', '.join(c for c, _ in self.schema.streams())}) "
                             f"is in the table", table=table.name)
        for c in missing:     # a column missing from the table is a modality absent from every row
            table.df[c] = None
        return table

    def encode(self, table: Table, with_labels: bool = False, on_bad_row: str = "error",
               progress: bool = False) -> EncodedSet:
        return encode_table(table, self.processors, self.labels if with_labels else None, on_bad_row, progress)

    @torch.no_grad()
    def outputs(self, data: EncodedSet, drop: tuple[str, ...] = (), batch_size: int = 64) -> np.ndarray:
        """Probabilities (classification, multilabel) or values in label units (regression), (N, K)."""
        self.model.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for i in range(0, len(data), batch_size):
            batch = self.collate(list(range(i, min(i + batch_size, len(data)))), data)
            inputs = to_device(batch["inputs"], device)
            logits = self.model({"inputs": inputs}, drop=drop)["logits"]
            chunks.append(self.model.head.probabilities(logits).cpu().numpy())
        out = np.concatenate(chunks)
        if self.labels.task == "regression":
            out = out * self.labels.std + self.labels.mean
        return out
