"""Per-group metrics (`--group COL`) and the largest gap between groups."""
from __future__ import annotations

import numpy as np

from ..data.manifest import Table, is_missing
from .evaluate import compact, metrics_for
from .metrics import HEADLINE

MISSING_GROUP = "(missing)"     # an empty group cell is a group of its own, never dropped


def group_values(table: Table, rows: list[int], column: str) -> list[str]:
    return [MISSING_GROUP if is_missing(v) else str(v) for v in table.df.loc[rows, column]]


def slice_metrics(labels, table: Table, rows: list[int], y: np.ndarray, outputs: np.ndarray, column: str) -> dict:
    """{"column", "metric", "groups": {g: metrics}, "largest_gap": {"metric", "gap", "best", "worst"}, "gaps": {...}}.

    Gaps are computed for every metric defined in at least two groups; `largest_gap` is the headline
    metric's (for regression, whose headline r2 is undefined on one row, the gap in mae)."""
    groups = np.array(group_values(table, rows, column))
    per = {}
    for g in sorted(set(groups), key=lambda g: (g == MISSING_GROUP, g)):
        sel = groups == g
        per[g] = compact(metrics_for(labels, y[sel], outputs[sel]))
    gaps = {}
    for name in next(iter(per.values())):
        vals = {g: m[name] for g, m in per.items() if isinstance(m.get(name), float)}
        if name == "n" or len(vals) < 2:
            continue
        hi, lo = max(vals, key=vals.get), min(vals, key=vals.get)
        lower_better = name in ("mae", "rmse", "ece")
        gaps[name] = {"metric": name, "gap": vals[hi] - vals[lo], "best": lo if lower_better else hi,
                      "worst": hi if lower_better else lo}
    headline = HEADLINE[labels.task] if labels.task != "regression" else "mae"
    return {"column": column, "metric": headline, "groups": per, "gaps": gaps,
            "largest_gap": gaps.get(headline)}
