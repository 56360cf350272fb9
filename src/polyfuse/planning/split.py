"""Validation without being asked: hold out part of the training table.

Stratified by the label (classification), so every class is validated; whole groups when a group
column is named (a speaker, a patient, a source file), so the validation score measures what a
new group will get — and so do early stopping and the ensemble's weights, which otherwise learn
to trust whatever recognises the training speakers. "auto" uses a column that looks like a
group (find_group); "none" (the default) splits by row, since a held-out group is never trained
on. Without a group column, rows that share a media file are kept together: a file used by
several rows would otherwise be seen in training and "validated" again.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..config import SchemaConfig
from ..data.manifest import Table
from ..errors import ConfigError

MIN_VAL_ROWS = 20      # fewer than this and the validation score is noise: train on every row
# Fewer training groups than this and each one held out is a tenth or more of the voices (sites,
# sources) the model learns from: the split says how to train the final model on all of them.
FEW_GROUPS = 10


def holdout(table: Table, schema: SchemaConfig, fraction: float, group_by: str,
            seed: int) -> tuple[Table, Table | None, str]:
    """(train part, validation part or None, a sentence saying what was done)."""
    n = len(table)
    if fraction <= 0:
        return table, None, "no validation table and train.val_fraction 0: every row trains"
    if round(n * fraction) < MIN_VAL_ROWS:
        return table, None, (f"no validation table, and {n} rows are too few to hold out "
                             f"{MIN_VAL_ROWS}: every row trains, the last epoch is kept")
    found = None
    if group_by == "auto":
        found = find_group(table, schema, fraction)
        group_by = found[0] if found else "none"
    groups, how = _groups(table, schema, group_by)
    if found:
        how += f" (found: {found[1]}; --group-by none splits by row)"
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
    if group_by != "none" and (left := len(np.unique(groups[tr]))) < FEW_GROUPS:
        # Spoken digit sequences, one voice held out for the test: WER 0.21-0.26 training on four
        # voices with a fifth validating, 0.18-0.19 training on all five (docs/benchmarks.md).
        said += (f"; {left} of {n_groups} groups train, so the held-out ones are a large share of the "
                 f"variety: once the settings are chosen, train.val_fraction 0 (--val-fraction 0) "
                 f"trains the final model on all {n_groups}")
    return part(tr, "training part"), part(va, "validation part"), said


def group_candidates(table: Table, schema: SchemaConfig) -> dict:
    """Unused text-valued columns whose few values repeat over many rows (a speaker, a source, a
    site): {column: distinct values}."""
    used = {c for c, _ in schema.streams()} | {schema.label}
    n, out = len(table), {}
    for col in table.df.columns:
        values = table.df[col].dropna()
        if col in used or values.empty or not all(isinstance(v, str) for v in values[:200]):
            continue
        k = values.nunique()
        if 2 <= k <= min(100, n // 10):
            out[str(col)] = int(k)
    return out


def find_group(table: Table, schema: SchemaConfig, fraction: float) -> tuple[str, str] | None:
    """(column, why) of the candidate to hold out by, or None. A group column must cut across the
    labels — most classes occur in a typical group, as every digit in each speaker's recordings;
    a column that names the class in other words (a category beside its number) would hold out
    whole classes — and have enough groups that whole ones make about the asked share: at least
    1 / (2 * fraction), so the held-out part is at most twice what was asked. Of those, the one
    with the most groups (the finest: a speaker rather than a recording site)."""
    df, need = table.df, max(3, math.ceil(1 / (2 * fraction)))
    best = None
    for col, k in group_candidates(table, schema).items():
        if k < need:
            continue
        why = f"'{col}' has {k} values"
        if schema.task == "classification" and schema.label in df.columns:
            labelled = df[[col, schema.label]].dropna()
            n_classes = labelled[schema.label].nunique()
            share = float(labelled.groupby(col)[schema.label].nunique().median()) / max(1, n_classes)
            if n_classes > 1 and share < 0.5:
                continue
            why += f", a typical one holding {share:.0%} of the classes"
        if best is None or k > best[0]:
            best = (k, col, why)
    return (best[1], best[2]) if best else None


def _groups(table: Table, schema: SchemaConfig, group_by: str) -> tuple[np.ndarray, str]:
    df = table.df
    if group_by != "none":
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
