"""A labelled table read for evaluation: every input column checked, labels never seen in training kept.

Training refuses an unknown label; evaluation must not: a test row whose label the model could never
predict is simply wrong, so it is scored as wrong (class index UNSEEN) and listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.dataset import EncodedSet
from ..data.labels import _norm
from ..data.manifest import Table, is_missing, read_table
from ..errors import InputError
from ..inference import Predictor
from .metrics import UNSEEN


@dataclass
class Labelled:
    table: Table
    data: EncodedSet
    y: np.ndarray                  # (N,) class index / (N, K) 0-1 / (N,) value in label units
    unseen: list[dict] = field(default_factory=list)    # {"row", "label"} per row with an unknown label


def read_labelled(predictor: Predictor, source, base_dir=None, progress: bool = False,
                  extra_columns: tuple[str, ...] = ()) -> Labelled:
    table = read_table(source, base_dir)
    need = [c for c, _ in predictor.schema.streams()] + [predictor.schema.label] + list(extra_columns)
    for c in need:
        if c not in table.df.columns:
            raise InputError(f"column '{c}' is not in the table (it has: {', '.join(map(str, table.df.columns))})",
                             table=table.name, column=c)
    data = predictor.encode(predictor.read(table), with_labels=False, progress=progress)
    ys, unseen = [], []
    for row in data.rows:
        value = table.df.at[row, predictor.schema.label]
        if is_missing(value):
            raise InputError("missing label", table=table.name, row=row, column=predictor.schema.label)
        y, unknown = encode_label(predictor, value)
        ys.append(y)
        if unknown:
            unseen.append({"row": int(row), "label": str(value)})
    return Labelled(table, data, np.stack(ys), unseen)


def encode_label(predictor: Predictor, value):
    """(encoded label, whether it holds a label never seen in training)."""
    codec = predictor.labels
    if codec.task == "regression":
        try:
            return np.float64(value), False
        except ValueError:
            raise InputError(f"label {value!r} is not a number") from None
    if codec.task == "multilabel":
        parts = [p.strip() for p in str(value).split("|") if p.strip()]
        y = np.array([float(c in parts) for c in codec.classes])
        return y, any(p not in codec.classes for p in parts)
    v = _norm(value)
    return (np.int64(codec.classes.index(v)), False) if v in codec.classes else (np.int64(UNSEEN), True)
