"""The generation recipe, top to bottom: tables -> schema -> validation split -> plan -> the
decoder's tokenizer (the target text) -> processors -> encoded rows -> encoders + fusion +
projector + decoder -> Trainer.fit -> saved run folder -> validation scores beside the
nearest-neighbour baseline.

`polyfuse train --task generation --decoder FOLDER` calls `train_generation`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..config import Config
from ..data.dataset import encode_table
from ..data.manifest import is_missing, read_table, resolve_schema
from ..data.processors import Processors
from ..encoders.pretrained import fill_feature_caches
from ..errors import ConfigError
from ..generation.metrics import text_metrics
from ..generation.model import SCRATCH, decoder_training, first_stage_epochs
from ..generation.run import (Generator, add_prompts, build_generation_model, make_collate, nearest_neighbour,
                              references_of)
from ..generation.targets import TextTargets
from ..planning import holdout
from ..planning.run import budget_outcome, plan_config
from ..runfolder import RunFolder
from ..training.trainer import Trainer, make_accelerator
from ..util import to_device
from .train import read_table_with


def train_generation(cfg: Config, train, val=None, out: str | Path = "runs/gen", resume: bool = False,
                     base_dir=None, progress: bool = True, fixed: set[str] | None = None,
                     preset: str | None = None) -> tuple[Generator, dict]:
    t0 = time.perf_counter()
    folder = RunFolder(out)
    cfg = folder.start(cfg, resume)
    acc = make_accelerator(cfg.train.bf16)
    say = acc.print

    # 1. Tables and schema; the label column is the target text.
    train_t = read_table(train, base_dir)
    val_t = read_table(val, base_dir) if val is not None else None
    schema = resolve_schema(train_t, dataclasses.replace(cfg.schema, task="generation"))
    if schema.label is None:
        raise ConfigError("a generation run needs the target text column (--label)")
    cfg = dataclasses.replace(cfg, schema=schema).validate()
    say(f"schema: text={schema.text} image={schema.image} audio={schema.audio} target={schema.label!r} "
        f"decoder={cfg.generate.decoder} ({decoder_training(cfg)})")
    split_note = None
    if val_t is None:
        train_t, val_t, split_note = holdout(train_t, schema, cfg.train.val_fraction, cfg.train.group_by,
                                             cfg.train.seed)
        say(split_note)
    if fixed is not None:
        cfg = plan_config(cfg, train_t, folder, fixed, preset, resume, None, split_note, say, acc.is_main_process)

    # 2. The decoder's tokenizer reads the targets; 3. processors read the inputs.
    if cfg.generate.decoder == SCRATCH:
        if resume and folder.has_processors():
            targets = TextTargets.load(folder.file(folder.PROCESSORS), cfg.generate.max_target_tokens)
        else:
            texts = [str(v) for r in range(len(train_t)) if not is_missing(v := train_t.df.at[r, schema.label])]
            targets = TextTargets.scratch([p.strip() for t in texts for p in t.split("|")], cfg)
    else:
        targets = TextTargets.from_decoder(cfg.generate.decoder, cfg.generate.max_target_tokens)
    with acc.main_process_first():
        if acc.is_main_process and not (resume and folder.has_processors()):
            processors = Processors.build(cfg, schema).fit(train_t)
            folder.write_preprocessing(processors)
            targets.save(folder.file(folder.PROCESSORS))
        else:
            processors = folder.processors(cfg)

    # 4. Every row checked before the first step (decoded into the cache, or found there).
    on_bad, show = cfg.train.on_bad_row, progress and acc.is_main_process
    train_set = add_prompts(cfg, targets, train_t, encode_table(train_t, processors, targets, on_bad, show, "reading"))
    val_set = add_prompts(cfg, targets, val_t,
                          encode_table(read_table_with(val_t, schema), processors, targets, on_bad, show, "reading")) \
        if val_t is not None else None

    # 5. Model and training: the projector (and LoRA or the whole decoder, by generate.decoder_train).
    torch.manual_seed(cfg.train.seed)
    model = build_generation_model(cfg, processors, targets, pretrained_weights=True)
    gen = Generator(cfg, processors, targets, model)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {cfg.model.fusion} fusion, d={cfg.model.d_model}; decoder {n_params / 1e6:.2f}M parameters in "
        f"all, {n_train / 1e6:.2f}M trained; {len(train_set)} training rows"
        + (f", {len(val_set)} validation rows" if val_set else ""))
    collate = make_collate(processors, targets)
    augment = None
    if cfg.augment.enabled:
        from ..data.augment import Augmenter, augmenting
        augment = augmenting(Augmenter(cfg.augment, processors))
    dropout = cfg.model.modality_dropout

    def step(m, batch):
        out = m(batch, modality_dropout=dropout)
        return {"loss": out["loss"], "ctc": out["ctc"]} if cfg.generate.ctc else {"loss": out["loss"]}

    @torch.no_grad()
    def validate(raw):
        # The score that picks the best epoch (and keeps early stopping off a plateau) is the share
        # of target tokens the decoder gets right given the true ones before it, as speech
        # recognisers choose epochs (ESPnet's valid.acc): the argmax is what greedy decoding writes,
        # while the loss of an unheard voice or style climbs as the model grows sure of itself
        # long before its words get worse (the loss's best epoch lost to the last in every digit
        # run measured, docs/benchmarks.md). Thousands of tokens make it fine-grained, so no noise
        # margin: ties go to the lower loss. The loss is the next-token loss alone (generate.ctc's
        # term left out, so runs with and without it compare). One forward pass each; generating
        # every epoch would cost far more.
        raw.eval()
        total, tokens, correct = 0.0, 0, 0
        bs = cfg.train.batch_size * 2
        for i in range(0, len(val_set), bs):
            batch = to_device(collate(list(range(i, min(i + bs, len(val_set)))), val_set), acc.device)
            out = raw(batch)
            total, tokens = total + float(out["lm_loss"]) * out["tokens"], tokens + out["tokens"]
            correct += out["correct"]
        accuracy = correct / max(1, tokens)
        return {"val_loss": total / max(1, tokens), "val_token_accuracy": accuracy, "score": accuracy}

    def before_epoch(raw, epoch, planned):
        # LLaVA's two stages in one run: the projector alone, then the decoder's adapters too.
        first = first_stage_epochs(cfg, planned) if raw.needs_first_stage else 0
        if raw.decoder_trains != (epoch >= first) and acc.is_main_process and first:
            say(f"epoch {epoch + 1}: stage {'2, the decoder learns too' if epoch >= first else '1, projector first'}")
        raw.train_decoder(epoch >= first)

    def on_epoch(raw, record, improved):
        if improved:
            gen.save_weights(folder.path, {"epoch": record["epoch"], "n_parameters": n_params,
                                           "train_rows": len(train_set)})

    with acc.main_process_first():      # the main process fills the feature cache; the others find it filled
        fill_feature_caches(model, [(len(train_set), lambda idx: collate(idx, train_set))]
                            + ([(len(val_set), lambda idx: collate(idx, val_set))] if val_set else []),
                            cfg.train.batch_size, cfg.data, say)
    trainer = Trainer(cfg.train, acc, folder, progress=progress, spent_s=time.perf_counter() - t0, data=cfg.data,
                      module_lr_scales=model.lr_scales())
    summary = trainer.fit(model, len(train_set), lambda idx: collate(idx, train_set), step,
                          validate if val_set is not None else None, on_epoch, resume, augment, before_epoch)
    gen.model = model.cpu().eval()
    summary.update(n_parameters=n_params, is_main_process=acc.is_main_process, task="generation",
                   budget=budget_outcome(cfg.train, summary, val_set is not None))
    say(summary["budget"]["said"])
    if acc.is_main_process and fixed is not None:
        folder.write_plan({**folder.plan(), "outcome": summary["budget"]})
    if val_set is None and acc.is_main_process:
        gen.save_weights(folder.path, {"epoch": summary["epoch"], "n_parameters": n_params,
                                       "train_rows": len(train_set)})

    # 6. Validation scores of the best weights, beside the nearest training text.
    if val_set is not None and acc.is_main_process:
        refs = references_of(val_t, val_set.rows, schema.label)
        metrics = gen.evaluate(val_set, refs)
        train_texts = [str(train_t.df.at[r, schema.label]) for r in train_set.rows]
        metrics["nearest_neighbour"] = text_metrics(nearest_neighbour(gen, train_set, train_texts, val_set), refs)
        metrics["split"] = "validation"
        folder.write_metrics(metrics)
        summary["val_metrics"] = metrics
    acc.wait_for_everyone()
    return gen, summary
