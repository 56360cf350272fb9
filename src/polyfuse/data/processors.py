"""All of a model's processors together: fitted on training data, saved and restored with the model."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, SchemaConfig
from ..errors import InputError
from .audio import AudioProcessor
from .image import ImageProcessor
from .manifest import Table, is_missing
from .pretrained import load_processor, make_processor
from .text import TextProcessor

MISSING = object()      # process_cell's "value not given" (None is a cell value: an empty cell)


class Processors:
    def __init__(self, cfg: Config, schema: SchemaConfig, by_modality: dict):
        self.cfg, self.schema, self.by_modality = cfg, schema, by_modality

    @classmethod
    def build(cls, cfg: Config, schema: SchemaConfig) -> "Processors":
        make = {"text": lambda: TextProcessor(cfg.text), "image": lambda: ImageProcessor(cfg.image),
                "audio": lambda: AudioProcessor(cfg.audio)}
        # Pretrained towers and word2vec come from data/pretrained.py; None means a built-in one.
        return cls(cfg, schema, {m: make_processor(cfg, m) or make[m]() for m in schema.modalities()})

    def fit(self, table: Table) -> "Processors":
        for m, proc in self.by_modality.items():
            values = [v for c in getattr(self.schema, m) for v in table.df[c] if not is_missing(v)]
            if m == "text":
                proc.fit(str(v) for v in values)
            else:
                proc.fit(table.resolve(v) for v in values)
        return self

    def save(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        for proc in self.by_modality.values():
            proc.save(folder)

    @classmethod
    def load(cls, cfg: Config, schema: SchemaConfig, folder: Path) -> "Processors":
        by = {}
        for m in schema.modalities():
            if (tower := load_processor(cfg, m, folder)) is not None:
                by[m] = tower
            elif m == "text":
                by[m] = TextProcessor.load(cfg.text, folder)
            elif m == "audio":
                by[m] = AudioProcessor.load(cfg.audio, folder)
            else:
                by[m] = ImageProcessor(cfg.image)
        return cls(cfg, schema, by)

    @property
    def text(self) -> TextProcessor | None:
        return self.by_modality.get("text")

    def process_cell(self, table: Table, row: int, column: str, modality: str, value=MISSING):
        """One cell -> tensors, or None when the cell is empty (the modality is absent). value: the
        cell when the caller has read it already (faster than looking it up in the DataFrame)."""
        if value is MISSING:
            value = table.df.at[row, column]
        if is_missing(value):
            return None
        proc = self.by_modality[modality]
        try:
            return proc(value if modality == "text" else table.resolve(value))
        except InputError as e:
            raise e.at(table=table.name, row=row, column=column) from None

    def collate(self, rows: list[dict]) -> dict:
        """rows: [{column: item or None}] -> {column: batch part}; a column absent in every row is left out."""
        out = {}
        for column, modality in self.schema.streams():
            items = [r.get(column) for r in rows]
            if any(x is not None for x in items):
                part = self.by_modality[modality].collate(items)
                part["modality"] = modality
                out[column] = part
        return out


def batch_size_of(inputs: dict) -> int:
    for part in inputs.values():
        for v in part.values():
            if isinstance(v, torch.Tensor):
                return v.shape[0]
    return 0
