"""Tables in, a schema out: which column is text, image, audio or the label.

A `Table` is a DataFrame plus the folder its relative paths resolve against and a
name used in error messages. Rows keep their position (0-based data row) as `row`: the
DataFrame's index, which for a chunk of a streamed table (data/stream.py) starts where the
chunk does. An image or audio cell holds a path, or the file's bytes (a tar shard's member).
"""
from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import MODALITIES, SchemaConfig
from ..errors import InputError
from .sources import AUDIO_EXT, BAD_BYTE, IMAGE_EXT, Blob, BlobFile, is_tar, read_chunks, source_base

WHOLE_CHUNK = 65_536            # rows per chunk when a folder or tar shards are read whole


@dataclass
class Table:
    df: pd.DataFrame
    base_dir: Path                 # relative paths resolve here (the manifest's folder)
    name: str                      # for error messages: the file path, or "DataFrame"

    def __len__(self):
        return len(self.df)

    def resolve(self, value) -> Path | BlobFile:
        if isinstance(value, bytes):         # the file itself, e.g. a tar shard's member
            return BlobFile(value)
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base_dir / p

    def strings(self) -> pd.DataFrame:
        """The cells as text (to store or hash); a file held as bytes becomes its shard and member name."""
        return self.df.map(lambda v: v.name if isinstance(v, Blob) else f"<{len(v)} bytes>"
                           if isinstance(v, bytes) else v).astype("string")


def read_table(source, base_dir: str | Path | None = None) -> Table:
    """CSV/TSV/JSONL/JSON/Parquet path, or a DataFrame (paths then resolve against base_dir or cwd)."""
    if isinstance(source, Table):
        return source
    if isinstance(source, pd.DataFrame):
        df = source.reset_index(drop=True)
        return checked_table(Table(df, Path(base_dir or os.getcwd()), "DataFrame"))
    if Path(source).is_dir() or is_tar(source):
        # a folder of Parquet files or tar shards: the chunked reader (data/sources.py), gathered
        parts = [df for _, df in read_chunks(source, WHOLE_CHUNK)]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return checked_table(Table(df, Path(base_dir) if base_dir else source_base(source), str(source)))
    path = Path(source)
    if not path.exists():
        raise InputError("table not found", table=str(path))
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz"):
            df = _read_delimited(path, "\t" if ".tsv" in suffix else ",")
        elif suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(io.StringIO(_decode(path)), lines=True, dtype=False)
        elif suffix == ".json":
            df = pd.read_json(io.StringIO(_decode(path)), dtype=False)
        else:
            raise InputError(f"unsupported table format '{path.suffix}' (use .csv, .tsv, .jsonl, .json or .parquet)",
                             table=str(path))
    except InputError:
        raise
    except Exception as e:  # pandas/pyarrow parse errors: keep their detail, add the file
        raise InputError(f"cannot parse table: {e}", table=str(path)) from e
    table = Table(df.reset_index(drop=True), Path(base_dir) if base_dir else path.resolve().parent, str(path))
    return checked_table(table)


def _decode(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8-sig", errors="polyfuse_mark")


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_decode(path)), sep=sep, dtype=str, keep_default_na=False,
                       na_values=[""], skipinitialspace=False)


def checked_table(table: Table) -> Table:
    if len(table.df.columns) == 0 or len(table.df) == 0:
        raise InputError("table is empty (no rows)", table=table.name)
    for col in table.df.columns:
        if not (table.df[col].dtype == object or pd.api.types.is_string_dtype(table.df[col])):
            continue
        for row, value in table.df[col].items():
            if isinstance(value, str) and BAD_BYTE in value:
                raise InputError("text is not valid UTF-8", table=table.name, row=int(row), column=str(col))
    return table


def is_missing(value) -> bool:
    """An empty cell: the modality is absent for that row."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value == ""


def resolve_schema(table: Table, schema: SchemaConfig) -> SchemaConfig:
    """Check the given columns exist; infer modalities for unassigned columns when none were given."""
    cols = [str(c) for c in table.df.columns]
    given = [c for m in MODALITIES for c in getattr(schema, m)]
    for c in given + ([schema.label] if schema.label else []):
        if c not in cols:
            raise InputError(f"unknown column '{c}'; the table has: {', '.join(cols)}", table=table.name, column=c)
    out = SchemaConfig(**{m: list(getattr(schema, m)) for m in MODALITIES}, label=schema.label, task=schema.task)
    if not given:
        for c in cols:
            if c != schema.label:
                m = infer_modality(table.df[c])
                if m:
                    getattr(out, m).append(c)
    if not out.modalities():
        raise InputError("no input columns: name them with --text/--image/--audio", table=table.name)
    if out.label and out.task is None:
        out.task = infer_task(table.df[out.label])
    out.validate()
    return out


def infer_modality(series: pd.Series) -> str | None:
    """image/audio by file extension of most cells; text for other string columns with words."""
    values = [v for v in series if not is_missing(v)][:200]
    if not values:
        return None
    # a cell holding the file's bytes (a tar member) has no path: its column is named by its extension
    exts = [f".{series.name}".lower() if isinstance(v, bytes) else Path(str(v)).suffix.lower() for v in values]
    values = [str(v) for v in values]
    if sum(e in IMAGE_EXT for e in exts) > len(values) / 2:
        return "image"
    if sum(e in AUDIO_EXT for e in exts) > len(values) / 2:
        return "audio"
    if not _numeric(values) and np.mean([" " in v for v in values]) > 0.3:
        return "text"
    return None


def infer_task(series: pd.Series) -> str:
    values = [v for v in series if not is_missing(v)]
    if any(isinstance(v, str) and "|" in v for v in values):
        return "multilabel"
    if _numeric([str(v) for v in values]):
        nums = np.array([float(v) for v in values])
        if np.any(nums != np.round(nums)) or len(set(nums.tolist())) > max(20, len(nums) // 10):
            return "regression"
    return "classification"


def _numeric(values) -> bool:
    try:
        [float(v) for v in values]
        return len(values) > 0
    except ValueError:
        return False
