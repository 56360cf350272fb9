"""Retrieval defaults, in one place: CLI flags default to None and override these.

Index settings left at None are chosen from the collection when its first vectors arrive
(`retrieval/tune.py` `plan`); the search-time ones (nprobe, efSearch) are then tuned on a sample
of queries to reach `target_recall` when the index is built by `index_collection`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass
class RetrievalConfig:
    batch_size: int = 64             # rows embedded per forward pass (and per resumable step)
    chunk_rows: int = 4096           # table rows read at a time: embed holds one chunk, never the table
    on_bad_row: str = "error"        # error | skip: a skipped row gets no vectors (present=False)
    kind: str = "auto"               # auto: flat below exact_below vectors, else ivf; flat: exact; ivf / hnsw
    exact_below: int = 50_000        # flat answers ~1,600 queries per CPU-second at 50k x 128 (benchmarks.md)
    k: int = 10
    # IVF: nlist cells (None: 4 sqrt(n), at least 39 training points per cell), nprobe visited.
    nlist: int | None = None
    nprobe: int | None = None        # None: tuned to target_recall (sqrt(nlist) until then)
    # HNSW: M links per node, efConstruction at build, efSearch at query time.
    hnsw_m: int | None = None        # None: 16, or 32 above 128 dimensions
    ef_construction: int | None = None   # None: max(80, 4 M)
    ef_search: int | None = None     # None: tuned to target_recall (4 M until then)
    target_recall: float = 0.95      # recall@10 of exact search that tuning aims for
    recall_queries: int = 500        # queries sampled from the collection to tune, and as many held out to report
    prompt: str = "{}"               # zero-shot label prompt; {} is replaced by the label

    def validate(self) -> "RetrievalConfig":
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        for name in ("batch_size", "chunk_rows", "k", "exact_below", "recall_queries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"retrieval {name} must be > 0, got {getattr(self, name)}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"retrieval {name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.target_recall <= 1:
            raise ConfigError(f"target recall must be in (0, 1], got {self.target_recall}")
        if "{}" not in self.prompt:
            raise ConfigError(f"the zero-shot prompt needs a '{{}}' for the label, got {self.prompt!r}")
        return self

    def merged(self, **overrides) -> "RetrievalConfig":
        """A copy with the values a user set (None means not given)."""
        import dataclasses
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()
