"""The supervised training recipe, top to bottom: tables -> schema -> validation split -> plan ->
labels -> processors -> encoded rows -> model -> Trainer.fit -> saved run folder -> validation metrics.

The CLI's `train` and the Python API's `fit` both call `train_run`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.dataset import EncodedSet, encode_table, make_collate
from ..data.labels import LabelCodec
from ..data.manifest import read_table, resolve_schema
from ..data.processors import Processors
from ..encoders.pretrained import fill_feature_caches
from ..errors import ConfigError, InputError
from ..evaluation.evaluate import encoded_labels, evaluate, metrics_for
from ..evaluation.metrics import HEADLINE
from ..inference import Predictor
from ..model import build_model
from ..planning import holdout
from ..planning.run import budget_outcome, plan_config
from ..runfolder import RunFolder
from ..training.trainer import Trainer, make_accelerator
from ..util import to_device


def train_run(cfg: Config, train, val=None, out: str | Path = "runs/exp", resume: bool = False,
              base_dir=None, progress: bool = True, init_from=None, allow_partial: bool = False,
              fixed: set[str] | None = None, preset: str | None = None) -> tuple[Predictor, dict]:
    """init_from: a run folder (say from `polyfuse pretrain`) whose preprocessing, encoders and
    fusion this run starts from (recipes/transfer.py); the head is always fresh.

    fixed: the config keys ("section.key") the user set; every other key the plan may choose from
    the data (planning/). None: `cfg` is complete as given and nothing is planned. preset: fast,
    medium or best (planning.PRESETS)."""
    t0 = time.perf_counter()     # a time budget counts reading the tables too
    folder = RunFolder(out)
    cfg = folder.start(cfg, resume)
    acc = make_accelerator(cfg.train.bf16)
    say = acc.print

    # 1. Tables and schema: which column is which modality, and the task.
    train_t = read_table(train, base_dir)
    val_t = read_table(val, base_dir) if val is not None else None
    schema = resolve_schema(train_t, cfg.schema)
    if schema.label is None:
        raise ConfigError("training needs a label column (--label)")
    cfg = dataclasses.replace(cfg, schema=schema).validate()
    say(f"schema: text={schema.text} image={schema.image} audio={schema.audio} "
        f"label={schema.label!r} task={schema.task}")
    split_note = None
    if val_t is None:
        train_t, val_t, split_note = holdout(train_t, schema, cfg.train.val_fraction, cfg.train.group_by,
                                             cfg.train.seed)
        say(split_note)
    elif cfg.train.group_by not in ("auto", "none"):
        say(f"a validation table was given: train.group_by '{cfg.train.group_by}' is not used")
    if fixed is not None:
        cfg = plan_config(cfg, train_t, folder, fixed, preset, resume, init_from, split_note, say,
                          acc.is_main_process)

    # 2. Label map from the training labels.
    try:
        labels = LabelCodec(schema.task).fit(train_t.df[schema.label])
    except (InputError, ValueError) as e:
        raise InputError(f"cannot build the label map: {e}", table=train_t.name, column=schema.label) from None

    # 3. Processors: fitted once on the main process, read back by the others.
    with acc.main_process_first():
        if acc.is_main_process and not (resume and folder.has_processors()):
            if init_from:   # the earlier run's tokenizer and statistics, so token ids match
                from .transfer import processors_from
                processors = processors_from(cfg, schema, init_from, train_t, say)
            else:
                processors = Processors.build(cfg, schema).fit(train_t)
            folder.write_preprocessing(processors, labels)
        else:
            processors = folder.processors(cfg)

    # 4. Every row checked before the first step (decoded into the cache, or found there).
    on_bad = cfg.train.on_bad_row
    show = progress and acc.is_main_process
    with acc.main_process_first():      # the main process fills the decode cache; the others find it filled
        train_set = encode_table(train_t, processors, labels, on_bad, show, "reading")
        val_set = encode_table(read_table_with(val_t, schema), processors, labels, on_bad, show, "reading") \
            if val_t is not None else None
    skipped = [dict(s, table=train_t.name) for s in train_set.skipped]
    if val_set is not None:
        skipped += [dict(s, table=val_t.name) for s in val_set.skipped]
    if acc.is_main_process and on_bad == "skip":
        folder.write_skipped(skipped)
        if skipped:
            say(f"skipped {len(skipped)} bad row(s); reasons in {folder.file(folder.SKIPPED)}")

    # 5. Model and training. The best weights are saved (config.json last) whenever validation improves.
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, processors, labels.n_outputs, pretrained_weights=True)
    if init_from:
        from .transfer import load_encoders
        load_encoders(model, init_from, allow_partial, say)
    predictor = Predictor(cfg, processors, labels, model)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {cfg.model.fusion} fusion, d={cfg.model.d_model}, {cfg.model.n_layers} layers, "
        f"{n_params / 1e6:.2f}M parameters; {len(train_set)} training rows"
        + (f", {len(val_set)} validation rows" if val_set else ""))

    collate = make_collate(processors)
    augment = None
    if cfg.augment.enabled:
        from ..data.augment import Augmenter, augmenting
        augment = augmenting(Augmenter(cfg.augment, processors))
    dropout = cfg.model.modality_dropout

    def step(m, batch):
        out = m(batch, modality_dropout=dropout)
        return {"loss": out["loss"], **out["balance"]}      # the balancing terms are logged per epoch

    def validate(raw):
        return validation(raw, val_set, collate, labels, cfg.train.batch_size * 2, acc.device)

    def on_epoch(raw, record, improved):
        if improved:
            predictor.save_weights(folder.path, {"epoch": record["epoch"], "n_parameters": n_params,
                                                 "train_rows": len(train_set)})

    with acc.main_process_first():      # the main process fills the feature cache; the others find it filled
        fill_feature_caches(model, [(len(train_set), lambda idx: collate(idx, train_set))]
                            + ([(len(val_set), lambda idx: collate(idx, val_set))] if val_set else []),
                            cfg.train.batch_size, cfg.data, say)
    trainer = Trainer(cfg.train, acc, folder, progress=progress, spent_s=time.perf_counter() - t0, data=cfg.data)
    summary = trainer.fit(model, len(train_set), lambda idx: collate(idx, train_set), step,
                          validate if val_set is not None else None, on_epoch, resume, augment)
    predictor.model = model.cpu().eval()
    summary.update(n_parameters=n_params, is_main_process=acc.is_main_process,
                   budget=budget_outcome(cfg.train, summary, val_set is not None))
    say(summary["budget"]["said"])
    if acc.is_main_process and fixed is not None:
        folder.write_plan({**folder.plan(), "outcome": summary["budget"]})

    # 6. The ensemble's weights from the validation rows (the same on every process), then saved.
    if model.ensemble and val_set is not None:
        from ..training.ensemble import fit_ensemble
        fitted = fit_ensemble(model, val_set, collate, cfg.train.batch_size * 2, "cpu")
        say("ensemble weights from the validation rows: "
            + ", ".join(f"{k} {v:.2f}" for k, v in fitted["weights"].items())
            + f" (validation loss {fitted['loss_equal']:.4f} equal, {fitted['loss_fitted']:.4f} fitted)")
        summary["ensemble"] = fitted
        if acc.is_main_process:
            predictor.save_weights(folder.path, {"ensemble": fitted})

    # 7. Validation metrics of the best weights.
    if val_set is not None and acc.is_main_process:
        metrics = evaluate(predictor, val_set)
        metrics["split"] = "validation"
        folder.write_metrics(metrics)
        summary["val_metrics"] = metrics
    acc.wait_for_everyone()
    return predictor, summary


@torch.no_grad()
def validation(model, data: EncodedSet, collate, labels: LabelCodec, batch_size: int, device) -> dict:
    """{"val_loss", "val_<headline metric>", "score"} on held-out rows: the loss the model trains on,
    and the headline metric from evaluation/metrics on the predictions in label units."""
    model.eval()
    total, outs = 0.0, []
    for i in range(0, len(data), batch_size):
        batch = to_device(collate(list(range(i, min(i + batch_size, len(data)))), data), device)
        out = model(batch)
        total += float(out["loss"]) * len(batch["label"])
        outs.append(model.head.probabilities(out["logits"]).cpu().numpy())
    name = HEADLINE[labels.task]
    value = metrics_for(labels, encoded_labels(labels, data), labels.predictions(np.concatenate(outs)).outputs)[name]
    loss = total / len(data)
    # R^2 is undefined on one row; the loss then ranks epochs the same way.
    score = -loss if value is None else value
    return {"val_loss": loss, f"val_{name}": value, "score": score, "score_noise": score_noise(labels.task, score, len(data))}


def score_noise(task: str, score: float, n: int) -> float:
    """One standard error of a proportion-like score (accuracy, F1) on n validation rows, at least
    what one row moves it by; 0 for regression (its score is not a proportion)."""
    if task == "regression":
        return 0.0
    p = min(max(score, 0.0), 1.0)
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def read_table_with(table, schema):
    """Check a validation table has the training schema's columns (the label included)."""
    for c in [c for c, _ in schema.streams()] + [schema.label]:
        if c not in table.df.columns:
            raise InputError(f"unknown column '{c}'; the table has: {', '.join(map(str, table.df.columns))}",
                             table=table.name, column=c)
    return table
