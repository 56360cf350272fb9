"""Index settings from the data, and the recall they reach.

`plan` fills the settings a user left at None from the collection's size and width: the kind
(exact below `exact_below` vectors), IVF cells, HNSW links. `tune_search` then measures recall@k
of the index against exact search on vectors sampled from the collection and, unless the user
fixed it, raises the search-time knob (IVF nprobe, HNSW efSearch) until half of the sample reaches
the target (with a two-standard-error margin); the recall it reports comes from the other,
held-out half. Each sampled query is left
out of its own results (exact and approximate alike): finding itself is trivial and would inflate
the recall by up to 1/k.
"""
from __future__ import annotations

import dataclasses
import math

import faiss
import numpy as np

from .config import RetrievalConfig

KNOB = {"ivf": "nprobe", "hnsw": "ef_search"}       # the search-time setting of each approximate kind


def plan(cfg: RetrievalConfig, n: int, dim: int) -> RetrievalConfig:
    """`cfg` with every unset index setting chosen for n vectors of `dim` dimensions."""
    kind = cfg.kind if cfg.kind != "auto" else ("flat" if n < cfg.exact_below else "ivf")
    # FAISS's guideline is 4-16 sqrt(n) cells; k-means wants at least 39 points per cell.
    nlist = cfg.nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
    # Wider vectors need more links per node for the graph to stay navigable at the same recall.
    m = cfg.hnsw_m or (32 if dim > 128 else 16)
    return dataclasses.replace(cfg, kind=kind, nlist=nlist, hnsw_m=m,
                               ef_construction=cfg.ef_construction or max(80, 4 * m),
                               # until tuned: values that reach ~0.9 recall@10 on clustered data
                               nprobe=cfg.nprobe or max(1, round(math.sqrt(nlist))),
                               ef_search=cfg.ef_search or 4 * m)


def candidates(kind: str, nlist: int, n: int) -> list[int]:
    """Knob values from cheapest to exact-ish: powers of two (IVF up to every cell)."""
    if kind == "ivf":
        return [v for v in (2 ** i for i in range(32)) if v < nlist] + [nlist]
    return [v for v in (2 ** i for i in range(4, 13)) if v < n] or [16]


def per_query_recall(approx: np.ndarray, exact: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(Q,) |approx top-k & exact top-k| / k, each list without the query's own position `own`
    (-2 for a query from outside the index). approx and exact hold k+1 positions per query (-1: no hit)."""
    out = np.empty(len(exact))
    for i, (a, e, o) in enumerate(zip(approx, exact, own)):
        a, e = a[(a != o) & (a >= 0)][:k], e[e != o][:k]
        out[i] = len(np.intersect1d(a, e)) / k
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray, own: np.ndarray, k: int) -> float:
    return float(per_query_recall(approx, exact, own, k).mean()) if len(exact) else 1.0


def lower_bound(recalls: np.ndarray) -> float:
    """Mean minus two standard errors: tuning stops only when the target holds with margin, so the
    held-out half (and fresh queries) land at or above it rather than half the time below."""
    return float(recalls.mean() - 2 * recalls.std(ddof=1) / np.sqrt(len(recalls))) if len(recalls) > 1 else 0.0


def tune_search(index, vectors, first: int = 0, seed: int = 0) -> dict:
    """Tune (if allowed) and measure `index` on queries drawn from `vectors`, its rows first, first+1, ...

    Returns and stores in index.meta["recall"]: k, recall (on the held-out half), queries (held out),
    target, exact (a flat index), knob and value (the search setting), tuned (False: the user's value),
    held_out (the held-out queries' positions in the index).
    """
    cfg, kind = index.cfg, index.meta["kind"]
    k = min(cfg.k, len(index) - 1)
    if kind == "flat" or k < 1:
        report = {"k": cfg.k, "recall": 1.0, "queries": 0, "target": cfg.target_recall, "exact": True,
                  "knob": None, "value": None, "tuned": False, "held_out": []}
        index.meta["recall"] = report
        return report
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=min(2 * cfg.recall_queries, len(vectors)), replace=False)
    queries = np.ascontiguousarray(vectors[np.sort(picks)], dtype=np.float32)
    own = first + np.sort(picks)
    order = rng.permutation(len(picks))            # sorted reads from a memmap, random halves
    tune, held = order[: len(order) // 2], order[len(order) // 2:]
    if first == 0 and len(vectors) == len(index):
        # `vectors` is the whole index: blocked matrix products (BLAS) beat scanning every IVF cell
        exact = faiss.knn(queries, np.asarray(vectors, np.float32), k + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]
    else:
        exact = index.exact_ids(queries, k + 1)
    knob = KNOB[kind]

    def recall(sel):
        return per_query_recall(index.search_ids(queries[sel], k + 1)[1], exact[sel], own[sel], k)

    if index.meta["search_tuned"] and len(tune):
        for value in candidates(kind, index.meta["nlist"], len(index)):
            index.set_search(**{knob: value})
            if lower_bound(recall(tune)) >= cfg.target_recall:
                break
    report = {"k": k, "recall": round(float(recall(held).mean()), 4), "queries": int(len(held)), "target": cfg.target_recall,
              "exact": False, "knob": knob, "value": index.meta[knob], "tuned": index.meta["search_tuned"],
              "held_out": own[held].tolist()}       # positions, so anyone can recompute the recall
    index.meta["recall"] = report
    return report
