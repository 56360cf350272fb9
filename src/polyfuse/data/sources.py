"""Table files read a chunk at a time: each reader yields (name, DataFrame) pairs of at most
`chunk_rows` rows, where name is the file the rows came from (for error messages).

CSV/TSV (.gz too) and JSONL go through pandas' chunked readers; Parquet (a file, or a folder of
files read as one table) through pyarrow datasets, one file after another; WebDataset tar shards
(`shards.tar`, or `shards-{000..009}.tar` as open_clip and img2dataset write them) become one row
per key, with a column per extension: `0001.jpg`, `0001.txt` and `0001.json` are the row
`{"__key__": "0001", "jpg": <bytes>, "txt": "...", "json": "..."}`. Image and audio members stay
bytes (a `Blob` that remembers shard and member, so errors can name them); other members are text
when they are valid UTF-8 and bytes otherwise. No chunk spans two files.
"""
from __future__ import annotations

import codecs
import gzip
import io
import posixpath
import re
import tarfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from ..errors import InputError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"}
PARQUET = (".parquet", ".pq")
TAR = (".tar", ".tar.gz", ".tgz")
KEY = "__key__"                  # the WebDataset key column of a tar table

# Undecodable bytes become this private-use character, so the table still parses and the exact
# cell can be named afterwards (lone surrogates would make the CSV parser itself fail).
BAD_BYTE = "\U0010fffd"
codecs.register_error("polyfuse_mark", lambda e: (BAD_BYTE, e.end))


class Blob(bytes):
    """A cell holding a file's contents instead of its path; `name` says where they came from."""

    def __new__(cls, data: bytes, name: str):
        self = super().__new__(cls, data)
        self.name = name
        return self


class BlobFile(io.BytesIO):
    """A Blob opened for reading, as image and audio decoding open a path."""

    def __init__(self, blob: bytes):
        super().__init__(blob)
        self.name = blob.name if isinstance(blob, Blob) else "<bytes>"


def source_name(source) -> str | None:
    """What an error calls an image or audio source: its path, or the shard and member of a blob."""
    if isinstance(source, (str, Path)):
        return str(source)
    return source.name if isinstance(source, BlobFile) else None


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` -> both."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.groups()
        width = len(a) if a.startswith("0") else 0
        parts = [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
    else:
        parts = body.split(",")
    return [x for p in parts for x in expand_braces(head + p + tail)]


def is_tar(source) -> bool:
    """A tar shard, or a brace pattern of them."""
    name = str(source).lower()
    return name.endswith(TAR) or ("{" in name and expand_braces(name)[0].endswith(TAR))


def source_base(source) -> Path:
    """Where a source's relative paths resolve: a Parquet folder itself, else the (first) file's folder."""
    first = Path(expand_braces(str(source))[0]).resolve()
    return first if first.is_dir() else first.parent


def kind_of(source: str | Path) -> str:
    """tar | parquet | csv | tsv | jsonl | json, from the path (a folder is a Parquet folder)."""
    name = str(source).lower()
    if is_tar(source):
        return "tar"
    path = Path(source)
    if path.is_dir() or name.endswith(PARQUET):
        return "parquet"
    suffix = name[:-3] if name.endswith(".gz") else name
    for ext, kind in ((".csv", "csv"), (".txt", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"),
                      (".ndjson", "jsonl"), (".json", "json")):
        if suffix.endswith(ext):
            return kind
    raise InputError(f"unsupported table format '{path.suffix}' (use .csv, .tsv, .jsonl, .json, .parquet, "
                     "a folder of .parquet files or .tar shards)", table=str(source))


def read_chunks(source: str | Path, chunk_rows: int) -> Iterator[tuple[str, pd.DataFrame]]:
    kind = kind_of(source)
    if kind == "tar":
        yield from _tar_chunks(expand_braces(str(source)), chunk_rows)
        return
    path = Path(source)
    if not path.exists():
        raise InputError("table not found", table=str(path))
    if kind == "parquet":
        yield from _parquet_chunks(path, chunk_rows)
        return
    try:
        with _text(path) as f:
            if kind == "json":              # one JSON document: nothing to stream
                df = pd.read_json(f, dtype=False)
                yield from ((str(path), df.iloc[a:a + chunk_rows]) for a in range(0, len(df), chunk_rows))
            elif kind == "jsonl":
                yield from ((str(path), df) for df in _jsonl_chunks(f, chunk_rows))
            else:                           # the same options as manifest.read_table's whole read
                with pd.read_csv(f, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                                 na_values=[""], skipinitialspace=False, chunksize=chunk_rows) as reader:
                    yield from ((str(path), df) for df in reader)
    except InputError:
        raise
    except Exception as e:  # pandas parse errors: keep their detail, add the file
        raise InputError(f"cannot parse table: {e}", table=str(path)) from e


def _jsonl_chunks(f, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Lines gathered and parsed exactly as manifest.read_table parses a whole file (same dtypes)."""
    lines = []
    for line in f:
        if line.strip():
            lines.append(line)
        if len(lines) == chunk_rows:
            yield pd.read_json(io.StringIO("".join(lines)), lines=True, dtype=False)
            lines = []
    if lines:
        yield pd.read_json(io.StringIO("".join(lines)), lines=True, dtype=False)


def _text(path: Path):
    # utf-8-sig drops a byte-order mark; polyfuse_mark keeps bad bytes nameable (see BAD_BYTE)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="polyfuse_mark", newline="")
    return open(path, encoding="utf-8-sig", errors="polyfuse_mark", newline="")


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or every .parquet/.pq file below a folder in name order (a stable row order)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(PARQUET)
                   and not p.name.startswith((".", "_")))
    if not files:
        raise InputError("folder holds no .parquet files", table=str(path))
    return files


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[str, pd.DataFrame]]:
    import pyarrow.dataset as ds
    try:
        dataset = ds.dataset([str(f) for f in parquet_files(path)], format="parquet")
        for fragment in dataset.get_fragments():           # in the order the files were given
            for batch in fragment.to_batches(schema=dataset.schema, batch_size=chunk_rows):
                if batch.num_rows:
                    yield fragment.path, batch.to_pandas()
    except InputError:
        raise
    except Exception as e:  # pyarrow: unreadable file, schemas that do not merge
        raise InputError(f"cannot read Parquet: {e}", table=str(path)) from e


def _tar_chunks(shards: list[str], chunk_rows: int) -> Iterator[tuple[str, pd.DataFrame]]:
    for shard in shards:
        if not Path(shard).exists():
            raise InputError("tar shard not found", table=shard)
        rows = []
        for row in _tar_rows(shard):
            rows.append(row)
            if len(rows) == chunk_rows:
                yield shard, pd.DataFrame(rows)
                rows = []
        if rows:
            yield shard, pd.DataFrame(rows)


def _tar_rows(shard: str) -> Iterator[dict]:
    """One dict per key, members read in archive order (a key's members are adjacent, as WebDataset writes)."""
    row = None
    try:
        with tarfile.open(shard, "r|*") as tar:           # streaming: one pass, nothing seeks
            for member in tar:
                base = posixpath.basename(member.name)
                if not member.isfile() or base.startswith("."):
                    continue
                stem, _, ext = base.partition(".")
                key, ext = posixpath.join(posixpath.dirname(member.name), stem), ext.lower()
                if row is None or row[KEY] != key:
                    if row is not None:
                        yield row
                    row = {KEY: key}
                if ext in row:
                    raise InputError(f"key '{key}' has two '{ext}' members", table=shard)
                row[ext] = _cell(tar.extractfile(member).read(), ext, f"{shard}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InputError(f"unreadable tar shard (after key '{row[KEY] if row else '-'}'): {e}",
                         table=shard) from None
    if row is not None:
        yield row


def _cell(data: bytes, ext: str, name: str):
    last = "." + ext.rsplit(".", 1)[-1]
    if last in IMAGE_EXT or last in AUDIO_EXT:
        return Blob(data, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Blob(data, name)
