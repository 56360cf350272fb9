"""`Index`: a FAISS index over one kind of vector (a column, or the fused row), with its metadata and rows.

Vectors are L2-normalised, so inner product is cosine similarity. FAISS numbers vectors 0, 1, 2, ...
in the order they are added (flat, IVF and HNSW alike); position i is row i of `rows`, whose `_id`
column holds the user's id. The folder:

    index.faiss   the FAISS index
    meta.json     model identity, name, modality, dimension, count, kind and its parameters
    rows.parquet  the original rows (strings), `_id` first

A collection folder (what `polyfuse index` writes) holds one such folder per vector name and a
collection.json; `Index.load(folder, target=...)` opens either.
"""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ..errors import PolyfuseError
from ..util import atomic_write_text
from .config import RetrievalConfig
from .tune import plan, tune_search

FORMAT = "polyfuse-index"
SETTINGS = ("kind", "nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search")   # kept in meta.json
ADD_CHUNK = 100_000          # vectors converted and added at a time
TRAIN_PER_CELL = 40          # IVF k-means training points per cell (FAISS warns below 39)


class Index:
    def __init__(self, dim: int, kind: str | None = None, model_id: str | None = None, name: str = "vectors",
                 modality: str | None = None, config: RetrievalConfig | None = None, **params):
        self.cfg = (config or RetrievalConfig()).merged(kind=kind, **params)
        if dim <= 0:
            raise PolyfuseError(f"index dimension must be > 0, got {dim}")
        self.meta = {"format": FORMAT, "version": 2, "model_id": model_id, "name": name,
                     "modality": modality or name, "dim": int(dim),
                     # the search knob was left to tuning (tune_search may raise it), not set by the user
                     "search_tuned": (self.cfg.nprobe if self.cfg.kind == "ivf" else self.cfg.ef_search) is None}
        self._note_settings()
        self.index = None              # made by the first add, once the collection's size is known
        self.rows = pd.DataFrame({"_id": pd.Series([], dtype="string")})

    def _note_settings(self):
        self.meta.update({k: getattr(self.cfg, k) for k in SETTINGS})

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors, rows: pd.DataFrame | None = None, ids=None, **kw) -> "Index":
        vectors = _as_matrix(vectors, "vectors to index")
        if len(vectors) == 0:
            raise PolyfuseError("no vectors to index: the collection is empty (or no row has this modality)")
        index = cls(vectors.shape[1], **kw)
        return index.add(vectors, rows=rows, ids=ids)

    def add(self, vectors, rows: pd.DataFrame | None = None, ids=None, model_id: str | None = None) -> "Index":
        """Append vectors (and their rows); ids default to positions continuing the existing ones."""
        vectors = _as_rows(vectors, "vectors to add")
        if len(vectors) == 0:
            return self
        self.check(model_id, vectors.shape[1])
        if rows is not None and len(rows) != len(vectors):
            raise PolyfuseError(f"{len(rows)} rows for {len(vectors)} vectors")
        if self.index is None:
            self._create(vectors)
        start = len(self)
        for a in range(0, len(vectors), ADD_CHUNK):      # a memory-mapped input is read a chunk at a time
            self.index.add(_as_matrix(vectors[a:a + ADD_CHUNK], "vectors to add"))
        new = (rows.reset_index(drop=True).astype("string") if rows is not None
               else pd.DataFrame(index=range(len(vectors))))
        if "_id" in new.columns:
            new = new.drop(columns="_id")
        new.insert(0, "_id", pd.Series(ids if ids is not None else range(start, start + len(vectors))).astype("string"))
        self.rows = new if start == 0 else pd.concat([self.rows, new], ignore_index=True)
        return self

    def _create(self, vectors):
        """Settings from the first vectors' count (tune.plan), then the FAISS index; IVF learns its cells."""
        self.cfg = plan(self.cfg, len(vectors), self.dim)
        self._note_settings()
        if self.cfg.kind == "ivf" and len(vectors) < self.cfg.nlist:
            raise PolyfuseError(f"an IVF index with {self.cfg.nlist} cells needs at least {self.cfg.nlist} vectors "
                                f"to train, got {len(vectors)}; use --kind flat for small collections")
        self.index = _make(self.cfg, self.dim)
        if self.cfg.kind == "ivf":
            # k-means needs ~40 points per cell, not millions: train on an even sample (its cost grows
            # with points x cells, so at 1M vectors and 4,000 cells this keeps it to minutes).
            step = max(1, len(vectors) // (TRAIN_PER_CELL * self.cfg.nlist))
            self.index.train(_as_matrix(vectors[::step], "training vectors"))

    def tune(self, vectors, first: int = 0) -> dict:
        """Measure recall@k against exact search on queries drawn from `vectors` (this index's rows
        first, first+1, ...) and, unless the search knob was set by hand, raise it until the target
        recall is reached (retrieval/tune.py). The report is kept in meta["recall"]."""
        return tune_search(self, vectors, first)

    def exact_ids(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(Q, k) positions of the exact top-k, from the index's own storage (no second copy of the
        vectors): flat as is, IVF with every cell visited, HNSW's flat storage."""
        if self.meta["kind"] == "ivf":
            return self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=self.index.nlist))[1]
        if self.meta["kind"] == "hnsw":
            return faiss.downcast_index(self.index.storage).search(queries, k)[1]
        return self.index.search(queries, k)[1]

    # -- checks ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.meta["dim"]

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def check(self, model_id: str | None, dim: int):
        """Refuse vectors of another model or dimension: their scores against this index mean nothing."""
        if model_id is not None and self.meta["model_id"] is not None and model_id != self.meta["model_id"]:
            raise PolyfuseError(f"the index '{self.meta['name']}' was built from model {self.meta['model_id']}, "
                                f"but these vectors come from model {model_id}: embed the collection with "
                                "the same model (or query with the model that built the index)")
        if dim != self.dim:
            raise PolyfuseError(f"the index '{self.meta['name']}' holds {self.dim}-dimensional vectors, "
                                f"got {dim}-dimensional ones (another model or projection?)")

    # -- searching ------------------------------------------------------------------------
    def search_ids(self, queries, k: int | None = None, where: dict | None = None,
                   model_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> (scores (Q, k), positions (Q, k)); a slot with no hit has position -1."""
        queries = _as_matrix(queries, "query")
        if len(queries) == 0:
            raise PolyfuseError("empty query: no query vectors were given")
        self.check(model_id, queries.shape[1])
        if len(self) == 0:
            raise PolyfuseError(f"the index '{self.meta['name']}' is empty: add vectors before searching")
        k = min(k or self.cfg.k, len(self))
        sel = None
        if where:
            allowed = np.flatnonzero(self.matching(where)).astype(np.int64)
            if len(allowed) == 0:
                raise PolyfuseError(f"no row of the index matches {where}")
            sel = faiss.IDSelectorBatch(allowed)
            k = min(k, len(allowed))
        scores, pos = self.index.search(queries, k, params=self._params(sel, k))
        return scores, pos

    def search(self, queries, k: int | None = None, where: dict | None = None,
               model_id: str | None = None) -> pd.DataFrame:
        """One line per hit: _query (number), _rank (1-based), _id, _score and the original row."""
        scores, pos = self.search_ids(queries, k, where, model_id)
        q, r = np.nonzero(pos >= 0)
        hits = self.rows.iloc[pos[q, r]].reset_index(drop=True)
        hits.insert(1, "_score", scores[q, r])
        hits.insert(0, "_rank", r + 1)
        hits.insert(0, "_query", q)
        return hits

    def matching(self, where: dict) -> np.ndarray:
        """(N,) bool: rows whose every named column equals the value (or one of the values) given."""
        ok = np.ones(len(self.rows), bool)
        for col, value in where.items():
            if col not in self.rows.columns:
                have = ", ".join(c for c in self.rows.columns if c != "_id")
                raise PolyfuseError(f"cannot filter on '{col}': the index rows have columns {have or '(none)'}")
            values = [str(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])]
            ok &= self.rows[col].isin(values).fillna(False).to_numpy(bool)
        return ok

    def _params(self, sel, k: int):
        kind = self.meta["kind"]
        if kind == "ivf":
            return faiss.SearchParametersIVF(sel=sel, nprobe=min(self.meta["nprobe"], self.index.nlist))
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.meta["ef_search"], k))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None) -> "Index":
        """Trade speed for recall at query time (IVF nprobe, HNSW efSearch)."""
        self.cfg = self.cfg.merged(nprobe=nprobe, ef_search=ef_search)
        self._note_settings()
        return self

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.index is not None:
            tmp = folder / ".index.faiss.tmp"
            faiss.write_index(self.index, str(tmp))
            tmp.replace(folder / "index.faiss")
        self.rows.to_parquet(folder / "rows.parquet", index=False)
        # meta.json last: its count says which index.faiss/rows.parquet belong together.
        atomic_write_text(folder / "meta.json", json.dumps({**self.meta, "count": len(self)}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, target: str | None = None) -> "Index":
        """An index folder, or a collection folder and the name or modality of one of its indexes."""
        folder = Path(folder)
        if (folder / "collection.json").exists():
            folder = folder / resolve_target(folder, target)
        if not (folder / "meta.json").exists():
            raise PolyfuseError(f"{folder} is not a Polyfuse index folder (no meta.json)")
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise PolyfuseError(f"{folder}/meta.json is not a Polyfuse index")
        self = cls.__new__(cls)
        self.meta = {k: v for k, v in meta.items() if k != "count"}
        # version 1 folders predate tuning: their settings were the user's (or fixed defaults)
        self.meta.setdefault("search_tuned", False)
        self.cfg = RetrievalConfig().merged(**{k: meta[k] for k in SETTINGS})
        self.index = faiss.read_index(str(folder / "index.faiss")) if (folder / "index.faiss").exists() else None
        self.rows = pd.read_parquet(folder / "rows.parquet").astype("string")
        if len(self) != meta["count"] or len(self.rows) != meta["count"]:
            raise PolyfuseError(f"{folder}: index ({len(self)}), rows ({len(self.rows)}) and meta.json "
                                f"({meta['count']}) disagree; the folder was not saved completely")
        return self

    def __repr__(self):
        m = self.meta
        return f"Index(name={m['name']!r}, modality={m['modality']!r}, kind={m['kind']!r}, dim={m['dim']}, count={len(self)})"


def index_collection(emb_dir: str | Path, out: str | Path, kind: str | None = None, add: bool = False,
                     **params) -> dict:
    """Index every vector name of an embedding folder into `out` (one Index folder per name);
    {name: {"count", "kind", "recall": tune report}}.

    add=True appends to the indexes already in `out` (same model and dimension required); rows
    without a name's modality (an empty cell, a skipped row) are left out of that name's index.
    Every approximate index is tuned and measured on the rows just added (Index.tune).
    """
    from .embed import check_file_stems, file_stem, load_embeddings
    meta, vecs, present, rows = load_embeddings(emb_dir)
    check_file_stems(meta["names"])
    out = Path(out)
    if add and not (out / "collection.json").exists():
        raise PolyfuseError(f"{out} holds no index to add to (no collection.json); drop --add to create it")
    if not add and (out / "collection.json").exists():
        raise PolyfuseError(f"{out} already holds an index; pass --add to add rows or choose another --out")
    report = {}
    for name, modality in meta["names"].items():
        keep = np.flatnonzero(present[name])
        folder = out / file_stem(name)          # a column name is not trusted as a path
        if add and (folder / "meta.json").exists():
            index = Index.load(folder)
        elif len(keep):
            index = Index(meta["dim"], kind, meta["model_id"], name, modality, **params)
        else:
            continue
        # Every row present: the memmap itself, so its pages are read as FAISS copies them.
        block = vecs[name] if len(keep) == len(rows) else np.asarray(vecs[name][keep])
        start = len(index)
        index.add(block, rows=rows.iloc[keep], ids=rows["_id"].iloc[keep].to_numpy(), model_id=meta["model_id"])
        recall = index.tune(block, first=start) if len(keep) else index.meta.get("recall")
        index.save(folder)
        report[name] = {"count": len(index), "kind": index.meta["kind"], "recall": recall}
    names = {n: m for n, m in meta["names"].items() if n in report}
    atomic_write_text(out / "collection.json", json.dumps(
        {"format": FORMAT + "-collection", "model_id": meta["model_id"], "dim": meta["dim"], "names": names,
         "counts": {n: r["count"] for n, r in report.items()}}, indent=2))
    return report


def resolve_target(collection: Path, target: str | None) -> str:
    """The index folder name in a collection folder for a column name, a modality or 'fused'."""
    from .embed import file_stem
    names = json.loads((collection / "collection.json").read_text())["names"]   # {name: modality}
    listing = ", ".join(f"{n} ({m})" for n, m in names.items())
    if target is None:
        raise PolyfuseError(f"{collection} holds several indexes; choose one with target: {listing}")
    hits = [target] if target in names else [n for n, m in names.items() if m == target]
    if len(hits) != 1:
        raise PolyfuseError(f"{collection} has {'no' if not hits else 'several'} indexes for '{target}'; "
                            f"choose one of: {listing}")
    return file_stem(hits[0])


def default_target(folder: str | Path, query_modality: str) -> str | None:
    """The only modality in the collection other than the query's; otherwise the fused row."""
    path = Path(folder) / "collection.json"
    if not path.exists():
        return None                       # a single index folder
    names = json.loads(path.read_text())["names"]
    others = {m for m in names.values() if m not in (query_modality, "fused")}
    return others.pop() if len(others) == 1 else "fused"


def _make(cfg: RetrievalConfig, dim: int):
    ip = faiss.METRIC_INNER_PRODUCT
    if cfg.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip)
        index.hnsw.efConstruction = cfg.ef_construction
        return index
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cfg.nlist, ip)


def _as_rows(x, what: str):
    """A 2-d array as is (a memmap stays on disk), anything else as a float32 matrix."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return x
    return _as_matrix(x, what)


def _as_matrix(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :] if x.size else x.reshape(0, 0)
    if x.ndim != 2:
        raise PolyfuseError(f"{what} must be a (n, dim) matrix, got shape {x.shape}")
    return np.ascontiguousarray(x)
