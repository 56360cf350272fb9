"""The supervised training recipe, top to bottom: tables -> schema -> labels -> processors ->
encoded rows -> model -> fit -> saved run folder -> validation metrics.

The CLI's `train` and the Python API's `fit` both call `train_run`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..config import Config
from ..data.dataset import encode_table, make_collate, write_skipped
from ..data.labels import LabelCodec
from ..data.manifest import read_table, resolve_schema
from ..data.pretrained import tower_sources
from ..data.processors import Processors
from ..errors import ConfigError, InputError
from ..inference import Predictor
from ..model import PolyfuseModel
from .checkpoint import atomic_write_text
from .loop import fit, make_accelerator


def train_run(cfg: Config, train, val=None, out: str | Path = "runs/exp", resume: bool = False,
              base_dir=None, progress: bool = True, init_from=None,
              allow_partial: bool = False) -> tuple[Predictor, dict]:
    """init_from: a run folder (say from `polyfuse pretrain`) whose preprocessing, encoders and
    fusion this run starts from (training/transfer.py); the head is always fresh."""
    out = Path(out)
    if resume and (out / "config.json").exists():
        # The run's own config wins over whatever flags came with --resume, except its budgets.
        saved = Config.from_dict(json.loads((out / "config.json").read_text())["config"])
        cfg = saved.merged({"train": {"epochs": cfg.train.epochs, "max_minutes": cfg.train.max_minutes}})
    elif not resume and ((out / "config.json").exists() or (out / "checkpoint").exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    acc = make_accelerator(cfg)
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

    # 2. Label map from the training labels.
    try:
        labels = LabelCodec(schema.task).fit(train_t.df[schema.label])
    except (InputError, ValueError) as e:
        raise InputError(f"cannot build the label map: {e}", table=train_t.name, column=schema.label) from None

    # 3. Processors: fitted once on the main process, read back by the others.
    out.mkdir(parents=True, exist_ok=True)
    with acc.main_process_first():
        if acc.is_main_process:
            processors = Processors.build(cfg, schema)
            if resume and (out / "processors").exists():
                processors = Processors.load(cfg, schema, out / "processors")
            else:
                if init_from:   # the earlier run's tokenizer and statistics, so token ids match
                    from .transfer import processors_from
                    processors = processors_from(cfg, schema, init_from, train_t, say)
                else:
                    processors.fit(train_t)
                processors.save(out / "processors")
        else:
            processors = Processors.load(cfg, schema, out / "processors")

    # 4. Every row decoded and checked before the first step.
    on_bad = cfg.train.on_bad_row
    show = progress and acc.is_main_process
    train_set = encode_table(train_t, processors, labels, on_bad, show, "reading")
    val_set = encode_table(read_table_with(val_t, schema), processors, labels, on_bad, show, "reading") \
        if val_t is not None else None
    skipped = [dict(s, table=train_t.name) for s in train_set.skipped]
    if val_set is not None:
        skipped += [dict(s, table=val_t.name) for s in val_set.skipped]
    if acc.is_main_process and on_bad == "skip":
        write_skipped(out / "skipped.csv", skipped)
        if skipped:
            say(f"skipped {len(skipped)} bad row(s); reasons in {out / 'skipped.csv'}")

    # 5. Model and training. The best weights are saved (config.json last) whenever validation improves.
    torch.manual_seed(cfg.train.seed)
    model = PolyfuseModel(cfg, schema, labels.n_outputs, processors.text.vocab_size if processors.text else None,
                          towers=tower_sources(processors, pretrained_weights=True))
    if init_from:
        from .transfer import load_encoders
        load_encoders(model, init_from, allow_partial, say)
    predictor = Predictor(cfg, processors, labels, model)
    if acc.is_main_process:
        predictor.save_preprocessing(out)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {cfg.model.fusion} fusion, d={cfg.model.d_model}, {cfg.model.n_layers} layers, "
        f"{n_params / 1e6:.2f}M parameters; {len(train_set)} training rows"
        + (f", {len(val_set)} validation rows" if val_set else ""))

    def on_best(raw_model, record):
        predictor.save_weights(out, {"trained": {"epoch": record["epoch"], "n_parameters": n_params,
                                                 "train_rows": len(train_set)}})

    train_collate = None
    if cfg.augment.enabled:
        from ..data.augment import Augmenter, augmenting
        train_collate = augmenting(make_collate(processors), Augmenter(cfg.augment, processors))
    summary = fit(model, train_set, val_set, make_collate(processors), cfg, out, acc, resume, on_best,
                  train_collate)
    predictor.model = acc.unwrap_model(model).cpu().eval()
    summary.update(n_parameters=n_params, is_main_process=acc.is_main_process)

    # 6. Validation metrics of the best weights.
    if val_set is not None and acc.is_main_process:
        from ..evaluation.evaluate import evaluate
        metrics = evaluate(predictor, val_set)
        metrics["split"] = "validation"
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        summary["val_metrics"] = metrics
    acc.wait_for_everyone()
    return predictor, summary


def read_table_with(table, schema):
    """Check a validation table has the training schema's columns (the label included)."""
    for c in [c for c, _ in schema.streams()] + [schema.label]:
        if c not in table.df.columns:
            raise InputError(f"unknown column '{c}'; the table has: {', '.join(map(str, table.df.columns))}",
                             table=table.name, column=c)
    return table
