"""Retrieval defaults, in one place: CLI flags default to None and override these."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

KINDS = ("flat", "ivf", "hnsw")


@dataclass
class RetrievalConfig:
    batch_size: int = 64             # rows embedded per forward pass (and per resumable step)
    on_bad_row: str = "error"        # error | skip: a skipped row gets no vectors (present=False)
    kind: str = "flat"               # flat: exact; ivf / hnsw: approximate, for large collections
    k: int = 10
    # IVF: nlist cells (None: sqrt(n), at least 39 training points per cell), nprobe visited.
    nlist: int | None = None
    nprobe: int = 32
    # HNSW: M links per node, efConstruction at build, efSearch at query time.
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    prompt: str = "{}"               # zero-shot label prompt; {} is replaced by the label

    def validate(self) -> "RetrievalConfig":
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        for name in ("batch_size", "k", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"retrieval {name} must be > 0, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist <= 0:
            raise ConfigError(f"retrieval nlist must be > 0, got {self.nlist}")
        if "{}" not in self.prompt:
            raise ConfigError(f"the zero-shot prompt needs a '{{}}' for the label, got {self.prompt!r}")
        return self

    def merged(self, **overrides) -> "RetrievalConfig":
        """A copy with the values a user set (None means not given)."""
        import dataclasses
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()
