"""A table encoded once into tensors: every cell decoded and checked before training starts.

Decoding everything up front means a bad file is found before the first step (not in
epoch 7), `--on-bad-row skip` knows every skipped row, and later epochs cost no decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .labels import LabelCodec
from .manifest import Table
from .processors import Processors


@dataclass
class EncodedSet(torch.utils.data.Dataset):
    inputs: list[dict]                      # per row: {column: tensors or None}
    labels: list[torch.Tensor | None]
    rows: list[int]                         # the table row each sample came from
    skipped: list[dict] = field(default_factory=list)
    prompts: list[torch.Tensor] | None = None   # generation with generate.prompt: each row's decoder prompt ids

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return i


def encode_table(table: Table, processors: Processors, labels: LabelCodec | None = None,
                 on_bad_row: str = "error", progress: bool = True, desc: str = "reading") -> EncodedSet:
    """Decode every row. on_bad_row='error' raises the first InputError; 'skip' records it and goes on."""
    schema = processors.schema
    streams = schema.streams()
    out = EncodedSet([], [], [])
    for row in tqdm(range(len(table)), desc=f"{desc} {Path(table.name).name}", disable=None if progress else True,
                    leave=False, mininterval=1.0):
        try:
            item = {c: processors.process_cell(table, row, c, m) for c, m in streams}
            if all(v is None for v in item.values()):
                raise InputError("row has no inputs (every input cell is empty)", table=table.name, row=row)
            y = None
            if labels is not None:
                try:
                    y = labels.encode(table.df.at[row, schema.label])
                except InputError as e:
                    raise e.at(table=table.name, row=row, column=schema.label) from None
        except InputError as e:
            if on_bad_row != "skip":
                raise
            out.skipped.append({"row": row, "column": e.column or "", "file": e.file or "", "reason": e.reason})
            continue
        out.inputs.append(item)
        out.labels.append(y)
        out.rows.append(row)
    if not out.inputs:
        raise InputError(f"no usable rows ({len(out.skipped)} skipped)", table=table.name)
    return out


def make_collate(processors: Processors):
    def collate(batch_idx, data: EncodedSet):
        rows = [data.inputs[i] for i in batch_idx]
        batch = {"inputs": processors.collate(rows)}
        ys = [data.labels[i] for i in batch_idx]
        if all(y is not None for y in ys):
            batch["label"] = torch.stack(ys)
        return batch
    return collate
