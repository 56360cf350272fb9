"""Vectors for search: one L2-normalised vector per row for every input column and for the fused row.

A column's vector comes from a pass with that column alone, so a query that has only text lands
in the same space as the text of the collection. Which vector the pass yields:
  - a run with contrastive projection heads: the head of that column's modality on its pooled tokens;
  - otherwise the fused [CLS] vector ("pooled"), the one the task head reads: for a supervised
    model it is the space in which a row's modalities agree on the label.
The fused row vector is the pooled output with every column present (with projection heads: the
normalised mean of the row's column vectors).

`embed_table` embeds into memory; `embed_to_folder` streams a collection into .npy files (read
back memory-mapped) with a progress bar and resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.loader import BatchStream, in_order, worker_count
from ..data.stream import iter_table, scan_table
from ..errors import InputError, PolyfuseError
from ..runfolder import RunFolder
from ..util import atomic_write_text, to_device
from .config import RetrievalConfig

FUSED = "fused"
FORMAT = "polyfuse-embeddings"


def model_identity(run_dir: str | Path) -> str:
    """Two runs share it only if they embed identically (RunFolder.identity)."""
    return RunFolder(run_dir).identity()


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(predictor, {column: its contrastive objective (column_vector embeds it)} or None) of a run folder.

    A pretraining run with the contrastive objective embeds through its projection heads; a
    fine-tuned run (or one pretrained without contrastive) embeds with its pooled vectors.
    """
    from ..inference import Predictor, load_pretrainer
    if RunFolder(run_dir).kind != "pretrained":
        return Predictor.load(run_dir, device), None
    cfg, processors, pre = load_pretrainer(run_dir, device)
    heads = None
    if "contrastive" in pre.objectives:
        c = pre.objectives["contrastive"]
        heads = {col: c for col in c.index}         # c.column_vector embeds each column
    return Predictor(cfg, processors, None, pre.model), heads


class Embedder:
    """A loaded run that turns rows (or a single query) into normalised vectors."""

    def __init__(self, predictor, run_dir: str | Path, heads: dict | None = None):
        self.predictor, self.run_dir = predictor, Path(run_dir)
        self.model = predictor.model.eval()
        self.model_id = model_identity(run_dir)
        self.heads = {c: h.to(next(self.model.parameters()).device).eval() for c, h in heads.items()} if heads else None
        self.columns = dict(predictor.schema.streams())            # {column: modality}

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> "Embedder":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        predictor, heads = load_run(run_dir, device)
        return cls(predictor, run_dir, heads)

    @property
    def names(self) -> dict:
        """{vector name: modality}: every input column, then the fused row."""
        return {**self.columns, FUSED: FUSED}

    @property
    def dim(self) -> int:
        return next(iter(self.heads.values())).out_dim if self.heads else self.predictor.cfg.model.d_model

    def column_for(self, modality_or_column: str) -> str:
        """A column name, or the model's single column of that modality (or 'fused')."""
        if modality_or_column in self.names:
            return modality_or_column
        cols = [c for c, m in self.columns.items() if m == modality_or_column]
        if len(cols) != 1:
            have = ", ".join(f"{c} ({m})" for c, m in self.names.items())
            what = "no" if not cols else "more than one"
            raise PolyfuseError(f"the model has {what} column of modality '{modality_or_column}'; "
                                f"name one of: {have}")
        return cols[0]

    @torch.no_grad()
    def embed_inputs(self, inputs: dict, names=None) -> dict:
        """A collated batch -> {name: ((B, D) float32 normalised, (B,) bool present)}."""
        device = next(self.model.parameters()).device
        inputs = to_device(inputs, device)
        B = _batch_size(inputs)
        names = list(names or self.names)
        # With projection heads the fused row is the mean of its columns' vectors, so that it lives
        # in the same space as a one-modality query; without them it is the model's fused [CLS].
        cols = list(self.columns) if FUSED in names and self.heads is not None else [n for n in names if n != FUSED]
        out = {}
        for name in cols:
            if name not in inputs:        # the column is empty in every row of this batch
                vec = torch.zeros(B, self.dim, device=device)
                present = torch.zeros(B, dtype=torch.bool, device=device)
            else:
                if self.heads:
                    vec, present = self.heads[name].column_vector(self.model, name, inputs[name])
                else:
                    fused = self.model.encode({name: inputs[name]})
                    vec, present = fused.pooled, fused.present[name]
            out[name] = (torch.nn.functional.normalize(vec.float(), dim=-1) * present[:, None], present)
        if FUSED in names:
            if self.heads is not None:
                vec = sum(out[c][0] for c in self.columns)
            else:
                vec = self.model.encode(inputs).pooled
            out[FUSED] = (torch.nn.functional.normalize(vec.float(), dim=-1),
                          torch.ones(B, dtype=torch.bool, device=device))
        return {n: (out[n][0].cpu().numpy().astype(np.float32), out[n][1].cpu().numpy()) for n in names}

    def read_rows(self, table, rows, on_bad_row: str = "error") -> tuple[list[dict], list[dict]]:
        """Decode the cells of some table rows: ([{column: item or None}], skipped rows with reasons)."""
        procs, items, skipped = self.predictor.processors, [], []
        for row in rows:
            try:
                item = {c: procs.process_cell(table, row, c, m) for c, m in self.columns.items()}
                if all(v is None for v in item.values()):
                    raise InputError("row has no inputs (every input cell is empty)", table=table.name, row=row)
            except InputError as e:
                if on_bad_row != "skip":
                    raise
                skipped.append({"row": row, "column": e.column or "", "file": e.file or "", "reason": e.reason})
                item = None
            items.append(item)
        return items, skipped

    def embed_rows(self, table, rows, on_bad_row: str = "error", names=None, read=None) -> tuple[dict, list[dict]]:
        """Rows of a Table -> {name: (vectors, present)}; a skipped row is absent from every name.
        read: those rows' read_rows result, when a DataLoader worker has already decoded them."""
        names = list(names or self.names)
        items, skipped = read if read is not None else self.read_rows(table, rows, on_bad_row)
        good = [i for i, it in enumerate(items) if it is not None]
        out = {n: (np.zeros((len(rows), self.dim), np.float32), np.zeros(len(rows), bool)) for n in names}
        if good:
            inputs = self.predictor.processors.collate([items[i] for i in good])
            for n, (vec, present) in self.embed_inputs(inputs, names).items():
                out[n][0][good], out[n][1][good] = vec, present
        return out, skipped

    def embed_table(self, source, batch_size: int | None = None, on_bad_row: str | None = None,
                    names=None, progress: bool = False):
        """A whole table in memory: (Table, {name: (N, D) vectors}, {name: (N,) present}, skipped)."""
        cfg = RetrievalConfig().merged(batch_size=batch_size, on_bad_row=on_bad_row)
        table = self.predictor.read(source)
        names = list(names or self.names)
        vecs = {n: np.zeros((len(table), self.dim), np.float32) for n in names}
        present = {n: np.zeros(len(table), bool) for n in names}
        skipped = []
        for a in tqdm(range(0, len(table), cfg.batch_size), desc="embedding", disable=None if progress else True):
            rows = list(range(a, min(a + cfg.batch_size, len(table))))
            got, sk = self.embed_rows(table, rows, cfg.on_bad_row, names)
            skipped += sk
            for n, (v, p) in got.items():
                vecs[n][a:a + len(rows)], present[n][a:a + len(rows)] = v, p
        return table, vecs, present, skipped

    def embed_query(self, value, modality: str, column: str | None = None) -> tuple[str, np.ndarray]:
        """One text, image path or audio path -> (column it was read as, (1, D) vector)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise PolyfuseError(f"empty {modality} query: give some text or a file path")
        column = column or self.column_for(modality)
        if self.columns.get(column) != modality:
            raise PolyfuseError(f"column '{column}' is not a {modality} column of this model")
        from ..data.manifest import Table
        df = pd.DataFrame({c: [value if c == column else None] for c in self.columns})
        got, _ = self.embed_rows(Table(df, Path.cwd(), "query"), [0], names=[column])
        return column, got[column][0]


def _batch_size(inputs: dict) -> int:
    from ..data.processors import batch_size_of
    return batch_size_of(inputs)


# -- a collection on disk ----------------------------------------------------------------
def embed_to_folder(embedder: Embedder, data, out: str | Path, batch_size: int | None = None,
                    on_bad_row: str | None = None, id_column: str | None = None, progress: bool = True,
                    chunk_rows: int | None = None) -> dict:
    """Stream a table into `out`: <name>.npy (N, D) float32 memmaps, <name>.present.npy, rows.parquet,
    meta.json, progress.json. Started again on the same model and table, it goes on where it stopped.

    Two passes over the table, each holding one chunk of `chunk_rows` rows (data/stream.py): the
    first counts rows and fingerprints the table (the memmaps' size, the resume check); the second
    decodes and embeds a batch at a time, flushing vectors to disk, and writes the rows' text.
    """
    cfg = RetrievalConfig().merged(batch_size=batch_size, on_bad_row=on_bad_row, chunk_rows=chunk_rows)
    out = Path(out)
    check_file_stems(embedder.names)
    scan = scan_table(data, cfg.chunk_rows)
    missing = [c for c in embedder.columns if c not in scan.columns]
    if len(missing) == len(embedder.columns):
        raise InputError(f"none of the model's input columns ({', '.join(embedder.columns)}) is in the table",
                         table=str(data))
    if id_column is not None and id_column not in scan.columns:
        raise InputError(f"id column '{id_column}' is not in the table", table=str(data), column=id_column)
    N, D = scan.rows, embedder.dim
    meta = {"format": FORMAT, "version": 2, "model_id": embedder.model_id, "run": str(embedder.run_dir),
            "data": str(data), "table": scan.fingerprint, "rows": N, "dim": D,
            "names": embedder.names, "projection_heads": embedder.heads is not None, "id_column": id_column,
            "base_dir": str(scan.base_dir)}
    done = _resume_point(out, meta)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {n: (NpyRows(out / f"{file_stem(n)}.npy", np.float32, (N, D), create=not done),
                  NpyRows(out / f"{file_stem(n)}.present.npy", np.bool_, (N,), create=not done))
              for n in embedder.names}
    if not done:
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    skipped = json.loads((out / "skipped.json").read_text()) if done and (out / "skipped.json").exists() else []
    if done == N and (out / "rows.parquet").exists():           # finished before: nothing to read again
        return {"rows": N, "dim": D, "names": list(embedder.names), "skipped": len(skipped), "resumed_at": done}
    columns = scan.columns + missing              # a model column the table lacks: empty in every row
    rows_out = RowsWriter(out / "rows.parquet", columns)
    bar = tqdm(total=N, initial=done, desc="embedding", unit="row", disable=None if progress else True)
    # Rows are decoded in DataLoader workers (data.workers) while this process runs the model;
    # workers are forked per chunk, so each inherits that chunk's table (nothing is pickled).
    data_cfg = embedder.predictor.cfg.data
    for chunk in iter_table(data, cfg.chunk_rows):
        chunk.df = chunk.df.reindex(columns=columns)
        rows_out.write(chunk, id_column)          # every chunk, also those embedded before a resume
        first, end = max(done, chunk.df.index[0]), chunk.df.index[-1] + 1
        batches = in_order(end, cfg.batch_size, first)
        if not batches:
            continue
        # Workers skip and report; the error (with on_bad_row error) is raised here, whole, not as a
        # worker's traceback.
        stream = BatchStream(lambda rows, t=chunk: embedder.read_rows(t, rows, "skip"),
                             worker_count(data_cfg, end - first), data_cfg.prefetch)
        for rows, read in zip(batches, stream(batches)):
            if read[1] and cfg.on_bad_row != "skip":
                bad = read[1][0]
                raise InputError(bad["reason"], table=chunk.name, row=bad["row"], column=bad["column"] or None,
                                 file=bad["file"] or None)
            got, sk = embedder.embed_rows(chunk, rows, cfg.on_bad_row, read=read)
            for n, (v, p) in got.items():
                arrays[n][0].write(rows[0], v), arrays[n][1].write(rows[0], p)
            skipped += sk
            # Progress is written after the vectors: a crash redoes at most one batch.
            if sk:
                atomic_write_text(out / "skipped.json", json.dumps(skipped))
            atomic_write_text(out / "progress.json", json.dumps({"done": rows[-1] + 1}))
            bar.update(len(rows))
    rows_out.close()
    bar.close()
    for vec, present in arrays.values():
        vec.close(), present.close()
    return {"rows": N, "dim": D, "names": list(embedder.names), "skipped": len(skipped), "resumed_at": done}


class NpyRows:
    """An (N, ...) .npy file written a block of rows at a time with plain writes: the rows go to the
    OS's page cache, whereas a memory map's written pages count in this process's resident memory
    until the map is closed (gigabytes for millions of rows)."""

    def __init__(self, path: Path, dtype, shape: tuple, create: bool):
        if create:          # header and a sparse file of the full size; no page is touched
            np.lib.format.open_memmap(path, "w+", dtype, shape).flush()
        self.dtype = np.dtype(dtype)
        self.offset = np.load(path, mmap_mode="r").offset            # where the header ends
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, block: np.ndarray):
        os.pwrite(self.fd, np.ascontiguousarray(block, self.dtype).tobytes(), self.offset + start * self.row_bytes)

    def close(self):
        os.close(self.fd)


class RowsWriter:
    """rows.parquet a chunk at a time (every column as text, `_id` first), moved into place when complete."""

    def __init__(self, path: Path, columns: list[str]):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.schema = pa.schema([(c, pa.string()) for c in ["_id", *[c for c in columns if c != "_id"]]])
        self.writer = pq.ParquetWriter(self.tmp, self.schema)

    def write(self, chunk, id_column: str | None):
        import pyarrow as pa
        rows = chunk.strings()
        ids = rows[id_column] if id_column else pd.Series(chunk.df.index.astype(str), index=rows.index)
        rows = rows.drop(columns="_id", errors="ignore")
        rows.insert(0, "_id", ids.astype("string"))
        self.writer.write_table(pa.Table.from_pandas(rows, schema=self.schema, preserve_index=False))

    def close(self):
        self.writer.close()
        self.tmp.replace(self.path)


def file_stem(name: str) -> str:
    """A vector name (a user's column name) as a file name inside the output folder: a column called
    '../x' or 'a/b' must not write outside it. Characters other than letters, digits, '_', '-', '.'
    and '=' become '_'; leading dots go, so no name is hidden or a parent folder."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", name).lstrip(".") or "_"


def check_file_stems(names) -> None:
    """Refuse two names that would share files ('a b' and 'a_b')."""
    seen = {}
    for n in names:
        other = seen.setdefault(file_stem(n).lower(), n)     # lower: case-insensitive file systems
        if other != n:
            raise PolyfuseError(f"columns '{other}' and '{n}' would share the file name "
                                f"'{file_stem(n)}'; rename one of them")


def _resume_point(out: Path, meta: dict) -> int:
    """Rows already embedded in `out` for this model and table (0 for a new folder)."""
    if not (out / "meta.json").exists():
        if out.exists() and any(out.iterdir()):
            raise PolyfuseError(f"{out} exists and is not an embedding folder; choose another --out")
        return 0
    old = json.loads((out / "meta.json").read_text())
    for key, what in (("model_id", "model"), ("table", "table"), ("dim", "dimension")):
        if old.get(key) != meta[key]:
            raise PolyfuseError(f"{out} holds embeddings of another {what} ({old.get(key)} vs {meta[key]}); "
                                "delete it or choose another --out")
    return json.loads((out / "progress.json").read_text())["done"] if (out / "progress.json").exists() else 0


def load_embeddings(folder: str | Path) -> tuple[dict, dict, dict, pd.DataFrame]:
    """(meta, {name: (N, D) memmap}, {name: (N,) present}, rows) of a finished embedding folder."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise PolyfuseError(f"{folder} is not an embedding folder (no meta.json); make one with `polyfuse embed`")
    meta = json.loads((folder / "meta.json").read_text())
    done = json.loads((folder / "progress.json").read_text())["done"] if (folder / "progress.json").exists() else 0
    if done < meta["rows"]:
        raise PolyfuseError(f"{folder} is unfinished ({done} of {meta['rows']} rows): run `polyfuse embed` "
                            "again with the same arguments to finish it")
    vecs = {n: np.load(folder / f"{file_stem(n)}.npy", mmap_mode="r") for n in meta["names"]}
    present = {n: np.load(folder / f"{file_stem(n)}.present.npy") for n in meta["names"]}
    return meta, vecs, present, pd.read_parquet(folder / "rows.parquet")
