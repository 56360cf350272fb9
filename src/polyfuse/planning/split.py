"""Validation without being asked: hold out part of the training table.

Stratified by the label (classification), so every class is validated; whole groups when a group
column is named (a speaker, a patient, a source file), so the validation score measures what a
new group will get. Without a group column, rows that share a media file are kept together: a
file used by several rows would otherwise be seen in training and "validated" again.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..config import SchemaConfig
from ..data.manifest import Table
from ..errors import ConfigError

MIN_VAL_ROWS = 20      # fewer than this and the validation score is noise: train on every row


def holdout(table: Table, schema: SchemaConfig, fraction: float, group_by: str | None,
            seed: int) -> tuple[Table, Table | None, str]:
    """(train part, validation part or None, a sentence saying what was done)."""
    n = len(table)
    if fraction <= 0:
        return table, None, "no validation table and train.val_fraction 0: every row trains"
    if round(n * fraction) < MIN_VAL_ROWS:
        return table, None, (f"no validation table, and {n} rows are too few to hold out "
                             f"{MIN_VAL_ROWS}: every row trains, the last epoch is kept")
    groups, how = _groups(table, schema, group_by)
    y = _strata(table, schema)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ConfigError(f"train.group_by '{group_by}' has one value: nothing to hold out")
    folds = max(2, min(round(1 / fraction), n_groups))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if how else \
        StratifiedKFold(folds, shuffle=True, random_state=seed)
    try:
        tr, va = next(splitter.split(np.zeros(n), y, groups) if how else splitter.split(np.zeros(n), y))
    except ValueError:      # a class too small to stratify: split the groups (or rows) alone
        rng = np.random.default_rng(seed)
        chosen = set(rng.permutation(np.unique(groups))[: max(1, round(n_groups / folds))].tolist())
        va = np.array([i for i in range(n) if groups[i] in chosen])
        tr = np.array([i for i in range(n) if groups[i] not in chosen])
    part = lambda idx, tag: Table(table.df.iloc[np.sort(idx)].reset_index(drop=True), table.base_dir,
                                  f"{table.name} ({tag})")
    said = (f"no validation table: held out {len(va)} of {n} rows ({len(va) / n:.0%})"
            + (", stratified by the label" if schema.task == "classification" else "")
            + (f", {how}" if how else ""))
    return part(tr, "training part"), part(va, "validation part"), said


def _groups(table: Table, schema: SchemaConfig, group_by: str | None) -> tuple[np.ndarray, str]:
    df = table.df
    if group_by is not None:
        if group_by not in df.columns:
            raise ConfigError(f"train.group_by: unknown column '{group_by}'; the table has: "
                              f"{', '.join(map(str, df.columns))}")
        return df[group_by].astype(str).to_numpy(), f"whole groups of '{group_by}'"
    media = [c for c in schema.image + schema.audio if df[c].notna().any()]
    shared = [(df[c].nunique(), c) for c in media if df[c].nunique() < df[c].notna().sum()]
    if not shared:
        return np.arange(len(df)).astype(str), ""
    _, col = min(shared)      # the column whose files are reused most
    keys = df[col].astype(str).where(df[col].notna(), pd.Series(np.arange(len(df)).astype(str)))
    return keys.to_numpy(), f"rows sharing a file of '{col}' kept together"


def _strata(table: Table, schema: SchemaConfig) -> np.ndarray:
    if schema.task == "classification" and schema.label in table.df.columns:
        return table.df[schema.label].astype(str).to_numpy()
    return np.zeros(len(table), dtype=int)
