"""POST /v1/search: embed one query with the model that built the index, then search the index.

    {"query": {"text": "a dog barking"}, "target": "image", "k": 10, "where": {"group": ["animals-nature"]}}
    {"query": {"image": "<base64 PNG>"}, "target": "audio", "k": 5}

The query is one cell of one input column (named by column, or by modality where the model has one
column of it), decoded and checked exactly like a /v1/predict cell: files arrive as base64 bytes and a
string is never opened as a path. Every index of the collection is loaded and checked against the
model when the server starts, so a mismatched index fails at start-up, not on the first request.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from ..errors import PolyfuseError
from ..retrieval.embed import Embedder
from ..retrieval.index import Index, default_target
from .protocol import ApiError, column_names, decode_rows, load_json, parse_rows
from .settings import ServeConfig

KEYS = ("query", "target", "k", "where")
MAX_K = 1000                 # hits per request: bounds the response size whatever the collection's


class SearchService:
    """An embedder and the indexes of one collection folder (or one index folder)."""

    def __init__(self, embedder: Embedder, folder: str | Path):
        self.embedder, self.folder = embedder, Path(folder)
        if (self.folder / "collection.json").exists():
            names = json.loads((self.folder / "collection.json").read_text())["names"]
            self.indexes = {n: Index.load(self.folder, target=n) for n in names}
        else:
            index = Index.load(self.folder)
            self.indexes = {index.meta["name"]: index}
        for index in self.indexes.values():
            index.check(embedder.model_id, embedder.dim)
        # What decode_rows needs of a backend: the model's columns and its processors.
        self.reader = SimpleNamespace(streams=list(embedder.columns.items()),
                                      processors=embedder.predictor.processors)
        self.lock = threading.Lock()      # one query at a time through the model: bounded CPU use

    @classmethod
    def load(cls, run_dir: str | Path, folder: str | Path) -> "SearchService":
        return cls(Embedder.load(run_dir, "cpu"), folder)

    def describe(self) -> dict:
        return {n: {"modality": i.meta["modality"], "kind": i.meta["kind"], "count": len(i), "dim": i.dim}
                for n, i in self.indexes.items()}

    def search(self, body: bytes, limits: ServeConfig) -> dict:
        request = load_json(body)
        if not isinstance(request, dict):
            raise ApiError(422, "the body must be a JSON object with 'query' and optional 'target', 'k', 'where'",
                           "body")
        unknown = [k for k in request if k not in KEYS]
        if unknown:
            raise ApiError(422, f"unknown field(s) {unknown}; expected {', '.join(KEYS)}", unknown[0])
        query = request.get("query")
        if not isinstance(query, dict) or len([v for v in query.values() if v not in (None, "")]) != 1:
            raise ApiError(422, "'query' must be an object with exactly one input, e.g. {\"text\": \"a dog\"}; "
                                f"accepted keys: {', '.join(column_names(self.reader))}", "query")
        k = request.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ApiError(422, f"'k' must be an integer from 1 to {MAX_K}, got {k!r}", "k")
        where = self._where(request.get("where"))
        rows = parse_rows(query, self.reader, limits)
        (column, _), = rows[0].items()
        item = decode_rows(rows, self.reader, limits)
        index = self._index(request.get("target"), self.embedder.columns[column])
        with self.lock:
            inputs = self.embedder.predictor.processors.collate(item)
            vec = self.embedder.embed_inputs(inputs, names=[column])[column][0]       # (1, D)
            try:
                hits = index.search(vec, k, where, model_id=self.embedder.model_id)
            except PolyfuseError as e:
                raise ApiError(422, str(e), "where") from None
        return {"query_column": column, "target": index.meta["name"], "hits": [
            {"rank": int(h["_rank"]), "id": h["_id"], "score": float(h["_score"]),
             "row": {c: (None if pd.isna(v) else str(v)) for c, v in h.drop(["_query", "_rank", "_id", "_score"]).items()}}
            for _, h in hits.iterrows()]}

    def _index(self, target, query_modality: str) -> Index:
        if target is not None and not isinstance(target, str):
            raise ApiError(422, "'target' must be a string: an index name or modality", "target")
        if len(self.indexes) == 1 and target is None:
            return next(iter(self.indexes.values()))
        if target is None:
            target = default_target(self.folder, query_modality)
        hits = [n for n, i in self.indexes.items() if target in (n, i.meta["modality"])]
        if len(hits) != 1:
            have = ", ".join(f"{n} ({i.meta['modality']})" for n, i in self.indexes.items())
            raise ApiError(422, f"{'no' if not hits else 'more than one'} index for target {target!r}; "
                                f"choose one of: {have}", "target")
        return self.indexes[hits[0]]

    @staticmethod
    def _where(where) -> dict | None:
        if where is None:
            return None
        ok = isinstance(where, dict) and all(
            isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
            for v in where.values())
        if not ok:
            raise ApiError(422, "'where' must map a row column to a string or a list of strings", "where")
        return where


def search_schema(service: SearchService) -> dict:
    """The OpenAPI request body of /v1/search, its query keys from the model's columns."""
    modality = dict(service.reader.streams)
    keys = {k: ({"type": "string", "minLength": 1} if modality[c] == "text" else
                {"type": "string", "format": "byte", "description": f"{modality[c]} file content, base64"})
            for k, c in column_names(service.reader).items()}
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["query"], "additionalProperties": False,
        "properties": {
            "query": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": keys,
                      "additionalProperties": False,
                      "description": "one input, by column or modality: text as a string, a file as base64"},
            "target": {"type": "string", "description": "index name or modality (default: the one "
                                                         "other modality in the collection, else fused)"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "where": {"type": "object", "description": "row column -> value or list of values",
                      "additionalProperties": {"oneOf": [{"type": "string"},
                                                         {"type": "array", "items": {"type": "string"},
                                                          "minItems": 1}]}}}}}}}
