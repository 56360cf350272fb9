"""Retrieval metrics: R@1/5/10, median rank and mAP, from exact and approximate indexes side by side.

Which targets are correct for a query is a boolean matrix (Q, T). `relevance` builds it from keys:
a target is correct when any key is equal for query and target (the same row, identical file
contents, identical text, the same label...). Ranks are 1-based; a query whose correct targets the
index never returned gets rank inf (an approximate index may miss them).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .config import RetrievalConfig
from .index import Index

KS = (1, 5, 10)


def relevance(query_keys: list, target_keys: list) -> np.ndarray:
    """Lists of (Q,) and (T,) key arrays, pairwise -> (Q, T) bool: any key equal (None never matches)."""
    Q, T = len(query_keys[0]), len(target_keys[0])
    rel = np.zeros((Q, T), bool)
    for qk, tk in zip(query_keys, target_keys):
        codes, uniq = pd.factorize(pd.Series(list(qk) + list(tk), dtype=object), use_na_sentinel=True)
        q, t = codes[:Q], codes[Q:]
        rel |= (q[:, None] == t[None, :]) & (q[:, None] >= 0)
    return rel


def content_key(table, column: str, modality: str) -> np.ndarray:
    """Per row: the text itself, or a hash of the file's bytes, so identical items count as the same."""
    out = []
    for v in table.df[column]:
        if v is None or pd.isna(v) or v == "":
            out.append(None)
        elif modality == "text":
            out.append(str(v))
        else:
            with open(table.resolve(v), "rb") as f:
                out.append(hashlib.sha1(f.read()).hexdigest())
    return np.array(out, dtype=object)


def rank_metrics(positions: np.ndarray, rel: np.ndarray) -> dict:
    """positions (Q, K) ranked target positions (-1: no hit), rel (Q, T) -> metrics over the Q queries."""
    Q = len(positions)
    valid = positions >= 0
    hit = np.where(valid, rel[np.arange(Q)[:, None], np.where(valid, positions, 0)], False)   # (Q, K)
    first = np.where(hit.any(1), hit.argmax(1) + 1, np.inf)
    n_rel = rel.sum(1)
    # AP: mean over a query's correct targets of precision at each one's rank; unretrieved ones add 0.
    prec = np.cumsum(hit, 1) / np.arange(1, hit.shape[1] + 1)
    ap = (prec * hit).sum(1) / np.maximum(n_rel, 1)
    has = n_rel > 0
    out = {f"R@{k}": float(np.mean(first[has] <= k)) for k in KS}
    out.update({"median_rank": float(np.median(first[has])) if has.any() else float("nan"),
                "mAP": float(ap[has].mean()) if has.any() else float("nan"),
                "queries": int(has.sum())})
    return out


def retrieval_metrics(queries: np.ndarray, targets: np.ndarray, rel: np.ndarray,
                      kinds=("flat", "hnsw"), groups: np.ndarray | None = None, by: str = "group", **params) -> dict:
    """{kind: metrics} for query -> target search with each index kind, every target ranked.

    With `groups` (Q,) (one value per query, None for none), also one entry `"{by}={value}"` per
    value: exact-search metrics over that value's queries, still ranked against every target, so a
    slice shows where the model fails (e.g. unseen kinds of objects) rather than an easier task.
    """
    out = {}
    for kind in kinds:
        index = Index.build(targets, kind=kind, **params)
        index.tune(targets)           # the search setting `polyfuse index` would choose for this collection
        _, pos = index.search_ids(queries, k=len(index))
        out[kind] = rank_metrics(pos, rel)
        if kind == "flat":
            exact = pos
    if groups is not None:
        if "flat" not in kinds:
            _, exact = Index.build(targets, kind="flat").search_ids(queries, k=len(targets))
        values = pd.Series(groups, dtype=object)
        for value in sorted(values.dropna().unique(), key=str):
            sel = (values == value).to_numpy()
            out[f"{by}={value}"] = rank_metrics(exact[sel], rel[sel])
    return out


def format_table(results: dict) -> str:
    """results {direction: {kind or slice: metrics}} -> an aligned text table."""
    cols = [f"R@{k}" for k in KS] + ["median_rank", "mAP", "queries"]
    width = max([7] + [len(k) + 2 for by_kind in results.values() for k in by_kind])
    lines = [f"{'direction':<22}{'index':<{width}}" + "".join(f"{c:>12}" for c in cols)]
    for direction, by_kind in results.items():
        for kind, m in by_kind.items():
            vals = "".join(f"{m[c]:>12.4f}" if c not in ("median_rank", "queries") else f"{m[c]:>12g}"
                           for c in cols)
            lines.append(f"{direction:<22}{kind:<{width}}" + vals)
    return "\n".join(lines)


def evaluate_retrieval(embedder, data, query: str, target: str, match=(), kinds=("flat", "hnsw"),
                       both: bool = True, batch_size: int | None = None, progress: bool = False,
                       by: str | None = None, **params) -> dict:
    """Embed a table, then query -> target (and back) metrics per index kind (and per value of the
    table column `by`, see `retrieval_metrics`).

    A target is correct for a query when it is the query's own row, has identical contents in the
    query's or the target's column (same text, byte-identical file), or equals it on every `match`
    column's value (e.g. the same digit).
    """
    from ..errors import InputError
    qc, tc = embedder.column_for(query), embedder.column_for(target)
    names = [qc, tc]
    table = embedder.predictor.read(data)
    for col in [*match, *([by] if by else [])]:           # checked before the (slow) embedding
        if col not in table.df.columns:
            raise InputError(f"column '{col}' (--match or --by) is not in the table", table=table.name, column=col)
    table, vecs, present, _ = embedder.embed_table(table, batch_size=batch_size, names=names, progress=progress)
    keys = [np.arange(len(table)).astype(object)]
    for c in names:
        if c in embedder.columns:
            keys.append(content_key(table, c, embedder.columns[c]))
    keys += [table.df[c].to_numpy(object) for c in match]
    results = {}
    for a, b in ((qc, tc), (tc, qc)) if both else ((qc, tc),):
        qi, ti = np.flatnonzero(present[a]), np.flatnonzero(present[b])
        rel = relevance([k[qi] for k in keys], [k[ti] for k in keys])
        groups = table.df[by].to_numpy(object)[qi] if by else None
        results[f"{a}->{b}"] = retrieval_metrics(vecs[a][qi], vecs[b][ti], rel, kinds, groups, by or "group", **params)
    return results


def zero_shot_metrics(embedder, data, column: str, labels_from: str, prompt: str | None = None,
                      batch_size: int | None = None, progress: bool = False) -> dict:
    """Zero-shot classification of `column`'s items (e.g. images) as search against one text prompt per
    distinct value of the table column `labels_from` (e.g. group): accuracy, top-3 accuracy, balanced
    accuracy, and the majority-class rate to read them against. Rows without the item or label are left out.
    """
    from ..errors import InputError
    from .search import zero_shot
    col = embedder.column_for(column)
    table, vecs, present, _ = embedder.embed_table(data, batch_size=batch_size, names=[col], progress=progress)
    if labels_from not in table.df.columns:
        raise InputError(f"label column '{labels_from}' is not in the table", table=table.name, column=labels_from)
    truth = table.df[labels_from].astype("string").fillna("").to_numpy(object)
    keep = present[col] & (truth != "")
    if not keep.any():
        raise InputError(f"no row has both '{col}' and '{labels_from}'", table=table.name, column=labels_from)
    truth = truth[keep]
    classes = sorted(set(truth))
    pred, scores = zero_shot(embedder, vecs[col][keep], classes, prompt)      # scores (Q, L) in class order
    true_idx = np.searchsorted(np.array(classes, dtype=object), truth)
    rank = 1 + (scores > scores[np.arange(len(truth)), true_idx][:, None]).sum(1)
    recalls = [float(np.mean(pred[truth == c] == c)) for c in classes]
    counts = pd.Series(truth).value_counts()
    return {"column": col, "labels_from": labels_from, "prompt": RetrievalConfig().merged(prompt=prompt).prompt,
            "accuracy": float(np.mean(pred == truth)), "top3_accuracy": float(np.mean(rank <= 3)),
            "balanced_accuracy": float(np.mean(recalls)), "majority_rate": float(counts.iloc[0] / len(truth)),
            "classes": len(classes), "rows": int(len(truth)),
            "per_class_recall": dict(zip(classes, recalls))}
