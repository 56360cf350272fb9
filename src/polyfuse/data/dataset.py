"""A table's rows as model inputs: checked once, decoded on demand.

`encode_table` reads the table once (in DataLoader workers for larger tables): every input cell
is decoded, or found in the decode cache (data/cache.py) by its content, and bad rows are skipped
or raised before the first step, so a bad file is found before training (not in epoch 7) and the
rows an epoch permutes are known. Nothing decoded is kept in memory: `EncodedSet.inputs[i]` reads
row i back from the cache (or, with data.cache off, decodes it again), in whichever process asks,
so DataLoader workers do the reading and the training process holds only batches in flight.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .cache import KEY_BYTES, DecodeCache, digest_bytes, item_key, proc_id
from .labels import LabelCodec
from .loader import BatchStream, in_order, worker_count
from .manifest import Table, is_missing
from .processors import Processors

SCAN_ROWS = 64      # rows per scanned chunk: one batch of work for a worker, one transaction in the cache


@dataclass
class EncodedSet(torch.utils.data.Dataset):
    inputs: Sequence[dict]                  # per row: {column: tensors or None}; a list, or RowInputs
    labels: Sequence[torch.Tensor | None]   # per row: its encoded label or None; a list, or Labels
    rows: list[int]                         # the table row each sample came from
    skipped: list[dict] = field(default_factory=list)
    prompts: list[torch.Tensor] | None = None   # generation with generate.prompt: each row's decoder prompt ids

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return i


class Labels(Sequence):
    """Encoded labels of equal shape in one tensor, with a presence flag per row: a list of 200,000
    one-element tensors costs about 150 MB of Python objects (bench/scale.py), this 1.8 MB.
    labels[i] is row i's tensor (a view) or None."""

    def __init__(self, values: torch.Tensor, present: np.ndarray):
        self.values, self.present = values, present

    @classmethod
    def pack(cls, values: list) -> "Labels | list":
        """One tensor when every present label has one shape and dtype (classification, multi-label,
        regression); the list as it is otherwise (generation's token ids of varying length)."""
        buffer = LabelBuffer(len(values))
        for v in values:
            buffer.add(v)
        packed = buffer.result()
        return packed if isinstance(packed, Labels) else values

    def __len__(self):
        return len(self.present)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.values[i] if self.present[i] else None


class LabelBuffer:
    """Labels added one by one into a tensor allocated at the first one, so that no list of one
    tensor per row exists even for a moment (its objects stay in Python's allocator after it is
    freed: at 200,000 rows the encode step's peak). Falls back to a list at the first label of
    another shape or dtype."""

    def __init__(self, capacity: int):
        self.capacity, self.n = capacity, 0
        self.values: torch.Tensor | None = None
        self.present = np.zeros(capacity, dtype=bool)
        self.items: list | None = None              # list mode

    def add(self, y: torch.Tensor | None):
        if self.items is None and y is not None:
            if self.values is None:
                self.values = torch.zeros((self.capacity, *y.shape), dtype=y.dtype)
            elif y.shape != self.values.shape[1:] or y.dtype != self.values.dtype:
                self.items = [self.values[i] if self.present[i] else None for i in range(self.n)]
        if self.items is not None:
            self.items.append(y)
        elif y is not None:
            self.values[self.n] = y
            self.present[self.n] = True
        self.n += 1

    def result(self) -> "Labels | list":
        if self.items is not None:
            return self.items
        if self.values is None:
            return [None] * self.n
        return Labels(self.values[: self.n], self.present[: self.n])


class RowInputs(Sequence):
    """The kept rows' inputs, each read when asked for: from the cache by the key the scan found,
    else decoded from the table (data.cache off, or an entry cleared since)."""

    def __init__(self, table: Table, processors: Processors, rows: np.ndarray, present: np.ndarray,
                 keys: np.ndarray | None, cache: DecodeCache | None):
        self.table, self.processors, self.cache = table, processors, cache
        self.streams = processors.schema.streams()
        self.rows, self.present, self.keys = rows, present, keys     # (N,), (N, C), (N, C, KEY_BYTES)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(range(*i.indices(len(self))))
        return self.take([i])[0]

    def take(self, idx) -> list[dict]:
        """Rows idx (a batch), every cached cell of them read in one query."""
        idx = list(idx)
        cells = [(i, c) for i in idx for c in range(len(self.streams)) if self.present[i, c]]
        found = self.cache.get_many([self.keys[i, c].tobytes() for i, c in cells]) if self.cache is not None else {}
        values = {}            # column -> the batch's cells, read together when one is not in the cache
        out = []
        for k, i in enumerate(idx):
            row, item = int(self.rows[i]), {}
            for c, (column, modality) in enumerate(self.streams):
                if not self.present[i, c]:
                    item[column] = None
                    continue
                packed = found.get(self.keys[i, c].tobytes()) if found else None     # no cache: keys is None
                if packed is not None:
                    item[column] = self.processors.by_modality[modality].unpack(packed)
                    continue
                if column not in values:
                    values[column] = column_cells(self.table, self.rows[idx], column)
                item[column] = self.processors.process_cell(self.table, row, column, modality, values[column][k])
            out.append(item)
        return out


def column_cells(table: Table, rows: np.ndarray, column: str) -> np.ndarray:
    """The cells of table rows `rows` in one column, in one take: a DataFrame lookup per cell costs
    about 0.1 ms, and turning a whole column into Python objects would hold every cell of a table
    that is meant to stay in its memory-mapped copy (manifest.spill)."""
    index = table.df.index
    if isinstance(index, pd.RangeIndex) and index.step == 1:
        positions = np.asarray(rows, dtype=np.int64) - index.start
    else:
        positions = index.get_indexer(rows)
    return np.asarray(table.df[column].array.take(positions), dtype=object)


def take(inputs: Sequence[dict], idx: list[int]) -> list[dict]:
    """Rows idx of EncodedSet.inputs: from RowInputs in one cache query, from a list one by one."""
    return inputs.take(idx) if isinstance(inputs, RowInputs) else [inputs[i] for i in idx]


def encode_table(table: Table, processors: Processors, labels: LabelCodec | None = None,
                 on_bad_row: str = "error", progress: bool = True, desc: str = "reading") -> EncodedSet:
    """Check every row (cells decoded or found in the cache; decoded ones stored). on_bad_row='error'
    raises the first InputError; 'skip' records it and goes on."""
    schema, data_cfg = processors.schema, processors.cfg.data
    cache = DecodeCache.of(data_cfg)
    streams = schema.streams()
    n = len(table)
    present = np.zeros((n, len(streams)), dtype=bool)
    keys = np.zeros((n, len(streams), KEY_BYTES), dtype=np.uint8) if cache is not None else None
    ok = np.zeros(n, dtype=bool)
    skipped = []
    scan = Scan(table, processors, cache)
    stream = BatchStream(scan, worker_count(data_cfg, n), data_cfg.prefetch)
    bar = tqdm(total=n, desc=f"{desc} {Path(table.name).name}", disable=None if progress else True,
               leave=False, mininterval=1.0)
    for chunk in stream(in_order(n, SCAN_ROWS)):
        if cache is not None:
            cache.write(chunk["items"], chunk["files"])
        for r in chunk["rows"]:
            row = r["row"]
            if r["error"] is None:
                ok[row], present[row] = True, r["present"]
                if keys is not None:
                    keys[row] = r["keys"]
            elif on_bad_row == "skip":
                skipped.append({"row": row, **r["error"]})
            else:
                raise InputError(r["error"]["reason"], table=table.name, row=row,
                                 column=r["error"]["column"] or None, file=r["error"]["file"] or None)
        bar.update(len(chunk["rows"]))
    bar.close()

    kept, label_values = [], LabelBuffer(int(ok.sum()))
    candidates = np.flatnonzero(ok)
    label_cells = column_cells(table, candidates, schema.label) if labels is not None else None
    for k, row in enumerate(candidates.tolist()):
        y = None
        if labels is not None:
            try:
                y = labels.encode(label_cells[k])
            except InputError as e:
                if on_bad_row != "skip":
                    raise e.at(table=table.name, row=row, column=schema.label) from None
                skipped.append({"row": row, "column": schema.label, "file": e.file or "", "reason": e.reason})
                ok[row] = False
                continue
        kept.append(row)
        label_values.add(y)
    if not kept:
        raise InputError(f"no usable rows ({len(skipped)} skipped)", table=table.name)
    skipped.sort(key=lambda s: s["row"])
    idx = np.asarray(kept)
    inputs = RowInputs(table, processors, idx, present[idx], keys[idx] if keys is not None else None, cache)
    return EncodedSet(inputs, label_values.result(), kept, skipped)


class Scan:
    """Worker side of encode_table: rows -> {"rows": [per row: present, keys or an error],
    "items": packed cells new to the cache, "files": file digests to record}. Reads the cache, never
    writes it (the main process does, one transaction per chunk)."""

    def __init__(self, table: Table, processors: Processors, cache: DecodeCache | None):
        self.table, self.processors, self.cache = table, processors, cache
        self.streams = processors.schema.streams()
        self.fingerprints = {m: p.fingerprint() for m, p in processors.by_modality.items()}
        self.procs = {m: proc_id(m, f) for m, f in self.fingerprints.items()}

    def __call__(self, rows: list[int]) -> dict:
        out = {"rows": [], "items": [], "files": []}
        misses = []                    # (row's record, stream index, modality, source, key) to decode
        cells = {column: column_cells(self.table, np.asarray(rows), column) for column, _ in self.streams}
        for k, row in enumerate(rows):
            present = np.zeros(len(self.streams), dtype=bool)
            keys = np.zeros((len(self.streams), KEY_BYTES), dtype=np.uint8)
            record = {"row": row, "present": present, "keys": keys, "error": None}
            out["rows"].append(record)
            for c, (column, modality) in enumerate(self.streams):
                value = cells[column][k]
                if is_missing(value):
                    continue
                present[c] = True
                try:
                    source = value if modality == "text" else self.table.resolve(value)
                    key = self._key(value, source, modality, out)
                except InputError as e:
                    record["error"], record["at"] = {"column": column, "file": e.file or "", "reason": e.reason}, c
                    break
                keys[c] = np.frombuffer(key, dtype=np.uint8)
                misses.append((record, c, modality, source, key))
            if record["error"] is None and not present.any():
                record["error"] = {"column": "", "file": "", "reason": "row has no inputs (every input cell is empty)"}
        # One query for the whole chunk: only cells not stored yet are decoded (each once).
        stored = self.cache.existing([m[4] for m in misses]) if self.cache is not None else set()
        for record, c, modality, source, key in misses:
            # A row reports its first bad cell in column order, as when each cell was read in turn.
            if key in stored or record.get("at", len(self.streams)) < c:
                continue
            try:
                packed = self.processors.by_modality[modality].pack(source)
            except InputError as e:
                record["error"], record["at"] = {"column": self.streams[c][0], "file": e.file or "", "reason": e.reason}, c
                continue
            if self.cache is not None:     # without a cache the cell is decoded to check it, read again when a batch needs it
                out["items"].append((key, self.procs[modality], packed))
                stored.add(key)
        return out

    def _key(self, value, source, modality: str, out: dict) -> bytes:
        """The cell's cache key (content digest with the processor's fingerprint); file digests
        to record go to out["files"]. Without a cache every key is zeros (never looked up)."""
        if self.cache is None:
            return bytes(KEY_BYTES)
        if modality == "text":
            content = digest_bytes(str(value).encode())
        else:
            content, record = self.cache.file_digest(source, modality)
            if record is not None:
                out["files"].append(record)
        return item_key(self.fingerprints[modality], content)


def make_collate(processors: Processors):
    def collate(batch_idx, data: EncodedSet):
        batch = {"inputs": processors.collate(take(data.inputs, batch_idx))}
        ys = [data.labels[i] for i in batch_idx]
        if all(y is not None for y in ys):
            batch["label"] = torch.stack(ys)
        return batch
    return collate
