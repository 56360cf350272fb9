"""Tables larger than memory: `iter_table` yields a table as `Table` chunks whose DataFrame index
is the global row number (so errors and outputs name the same row a whole read would), and
`scan_table` makes one streaming pass for what must be known before the first chunk is used: the
row count, every column, the label values and a content fingerprint. Readers: data/sources.py.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import InputError
from .manifest import Table, checked_table, is_missing
from .sources import Blob, read_chunks, source_base


@dataclass
class TableScan:
    rows: int
    columns: list[str]               # every column seen, in the order first seen
    labels: dict[str, int] | None    # label value (as text) -> rows holding it; None without a label column
    fingerprint: str                 # the same rows and cells (files held as bytes included) give the same value
    base_dir: Path                   # where its relative paths resolve


def iter_table(source, chunk_rows: int, base_dir: str | Path | None = None) -> Iterator[Table]:
    """A table path (CSV/TSV/JSONL/JSON/Parquet file or folder, tar shards), DataFrame or Table, in
    chunks of at most chunk_rows rows; a chunk never spans two files, so its name is the file's."""
    if chunk_rows <= 0:
        raise InputError(f"chunk_rows must be > 0, got {chunk_rows}")
    if isinstance(source, (Table, pd.DataFrame)):
        whole = source if isinstance(source, Table) else Table(source, Path(base_dir or Path.cwd()), "DataFrame")
        df = whole.df.reset_index(drop=True)
        parts = ((whole.name, df.iloc[a:a + chunk_rows]) for a in range(0, len(df), chunk_rows))
        base = whole.base_dir
    else:
        parts = read_chunks(source, chunk_rows)
        base = Path(base_dir) if base_dir else source_base(source)
    start = 0
    for name, df in parts:
        if len(df) == 0:
            continue
        df = df.set_axis(pd.RangeIndex(start, start + len(df)))
        start += len(df)
        yield checked_table(Table(df, base, name))
    if start == 0:
        raise InputError("table is empty (no rows)", table=str(source) if not isinstance(source, pd.DataFrame)
                         else "DataFrame")


def scan_table(source, chunk_rows: int, label: str | None = None, base_dir=None) -> TableScan:
    """One pass over the table, holding one chunk at a time."""
    rows, columns, labels, digest = 0, {}, ({} if label else None), hashlib.sha256()
    for chunk in iter_table(source, chunk_rows, base_dir):
        base_dir = chunk.base_dir
        rows += len(chunk)
        columns.update(dict.fromkeys(str(c) for c in chunk.df.columns))
        chunk_digest(digest, chunk)
        if label is None:
            continue
        if label not in chunk.df.columns:
            raise InputError(f"label column '{label}' is not in the table", table=chunk.name, column=label)
        for value in chunk.df[label]:
            if not is_missing(value):
                key = label_text(value)
                labels[key] = labels.get(key, 0) + 1
    return TableScan(rows, list(columns), labels, digest.hexdigest()[:32], base_dir)


def chunk_digest(digest, chunk: Table) -> None:
    """Fold a chunk into a running sha256: its cells as text with their row numbers, then the
    contents of any file held as bytes (its text is only a name). It does not depend on how the
    table is cut into chunks, so an embedding resumed with another --chunk-rows still matches."""
    text = chunk.strings()
    for col in chunk.df.columns:       # 3 and 3.0 alike: the dtype of a JSON chunk depends on its rows
        if pd.api.types.is_float_dtype(chunk.df[col]):
            text[col] = chunk.df[col].map(lambda v: None if np.isnan(v) else label_text(v)).astype("string")
    digest.update(pd.util.hash_pandas_object(text, index=True).values.tobytes())
    for col in chunk.df.columns:
        if chunk.df[col].dtype == object:
            for value in chunk.df[col]:
                if isinstance(value, Blob):
                    digest.update(hashlib.sha256(value).digest())


def label_text(value) -> str:
    """A label as text; 3 and 3.0 are one label (a JSON chunk with a missing label reads ints as floats)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
