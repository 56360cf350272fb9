"""The self-supervised pretraining recipe: an unlabeled table -> processors -> encoded rows -> model +
objectives -> a run folder whose encoders and fusion `polyfuse train --init-from` starts from.

Same run folder format as training: processors/ and schema.json first, then per epoch
model.safetensors (encoders, fusion and the objectives' heads under `objectives.`) and config.json
renamed into place last, and one log.jsonl line per epoch with every objective's loss (and, with
a validation table, each one's loss on it). checkpoint/ holds the optimizer, schedule position and
RNG after every epoch, so `resume=True` continues an interrupted run exactly as an unbroken one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.dataset import encode_table, make_collate
from ..data.manifest import read_table, resolve_schema
from ..data.pretrained import tower_sources
from ..data.processors import Processors
from ..errors import ConfigError
from ..inference import FORMAT_VERSION
from ..model import PolyfuseModel
from ..objectives import Pretrainer, PretrainConfig, build_objectives
from . import loop
from .checkpoint import (atomic_save_tensors, atomic_write_text, load_training_state, save_training_state,
                         state_dict_cpu)
from .loop import (epoch_batches, make_accelerator, optimizer_step, over_budget, param_groups, restore,
                   to_device)
from .schedule import warmup_cosine


def pretrain_run(cfg: Config, pcfg: PretrainConfig, data, out: str | Path = "runs/pre", base_dir=None,
                 progress: bool = True, val=None, resume: bool = False) -> dict:
    """val: an optional held-out table, scored with every objective after each epoch (logged as
    val_<name>_loss; masks and negatives drawn from a fixed seed, so epochs compare)."""
    out = Path(out)
    if resume and (out / "config.json").exists():
        # The run's own settings win over the flags that came with --resume, except its budgets.
        meta = json.loads((out / "config.json").read_text())
        cfg = Config.from_dict(meta["config"]).merged(
            {"train": {"epochs": cfg.train.epochs, "max_minutes": cfg.train.max_minutes}})
        pcfg = PretrainConfig(**meta["pretrain"])
    elif not resume and ((out / "config.json").exists() or (out / "checkpoint").exists()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    acc = make_accelerator(cfg)
    say = acc.print

    # 1. Table and schema: columns only, labels (if any) are ignored.
    table = read_table(data, base_dir)
    schema = resolve_schema(table, dataclasses.replace(cfg.schema, label=None, task=None))
    cfg = dataclasses.replace(cfg, schema=schema).validate()
    pcfg.validate(schema)
    say(f"schema: text={schema.text} image={schema.image} audio={schema.audio}; "
        f"objectives: {', '.join(pcfg.objectives)}")

    # 2. Processors, fitted on the main process, read back by the others; then every row decoded.
    out.mkdir(parents=True, exist_ok=True)
    with acc.main_process_first():
        if resume and (out / "processors").exists():     # the interrupted run's tokenizer and statistics
            processors = Processors.load(cfg, schema, out / "processors")
        elif acc.is_main_process:
            processors = Processors.build(cfg, schema).fit(table)
            processors.save(out / "processors")
            atomic_write_text(out / "schema.json", json.dumps(
                {"text": schema.text, "image": schema.image, "audio": schema.audio, "label": None,
                 "task": None}, indent=2))
        else:
            processors = Processors.load(cfg, schema, out / "processors")
    rows = encode_table(table, processors, None, cfg.train.on_bad_row, progress and acc.is_main_process)
    val_rows = None
    if val is not None:
        val_rows = encode_table(read_table(val, base_dir), processors, None, cfg.train.on_bad_row, False)

    # 3. Model (its head is never trained here and never saved) and objectives.
    torch.manual_seed(cfg.train.seed)
    vocab = processors.text.vocab_size if processors.text else None
    # Pretrained towers (--text-encoder ...) start from their checkpoints here as in training.
    model = PolyfuseModel(cfg, schema, 1, vocab, towers=tower_sources(processors, pretrained_weights=True))
    pre = Pretrainer(model, build_objectives(pcfg, cfg, model, processors), pcfg.weights)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    say(f"model: {cfg.model.fusion} fusion, d={cfg.model.d_model}, {cfg.model.n_layers} layers, "
        f"{n_params / 1e6:.2f}M parameters; {len(rows)} unlabeled rows")
    collate = make_collate(processors)
    if cfg.augment.enabled:
        from ..data.augment import Augmenter, augmenting
        collate = augmenting(collate, Augmenter(cfg.augment, processors))

    # 4. The loop: loop.py's batching, optimizer grouping and schedule, losses logged one by one.
    tc = cfg.train
    rank, world = acc.process_index, acc.num_processes
    steps = len(epoch_batches(len(rows), tc.batch_size, tc.seed, 0, rank, world)) * tc.epochs
    opt = torch.optim.AdamW(param_groups(pre, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, int(tc.warmup_ratio * steps)))
    state = {"epoch": 0, "step": 0, "elapsed_s": 0.0}
    saved = load_training_state(out) if resume else None
    if saved is not None:
        state = restore(saved, pre, opt, sched, say)
    pre, opt = acc.prepare(pre, opt)
    raw = acc.unwrap_model(pre)
    t_start, step, stopped, epoch = time.perf_counter() - state["elapsed_s"], state["step"], None, state["epoch"]
    for epoch in range(state["epoch"] + 1, tc.epochs + 1):
        pre.train()
        sums, seen, t_epoch = {}, 0, time.perf_counter()
        batches = epoch_batches(len(rows), tc.batch_size, tc.seed, epoch - 1, rank, world)
        bar = tqdm(batches, desc=f"pretrain {epoch}/{tc.epochs}", leave=False, mininterval=0.5,
                   disable=None if progress and acc.is_main_process else True)
        for idx in bar:
            batch = to_device(collate(idx, rows), acc.device)
            with acc.autocast():
                losses = pre(batch, modality_dropout=cfg.model.modality_dropout)
            optimizer_step(acc, pre, opt, sched, losses["loss"], tc.grad_clip)
            step += 1
            seen += len(idx)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
            if tc.max_minutes is not None and over_budget(acc, t_start, tc.max_minutes):
                stopped = "max_minutes"
                break
        record = {"epoch": epoch, "step": step, "train_loss": sums.get("loss", 0.0) / max(1, seen)}
        record.update({k: v / max(1, seen) for k, v in sums.items() if k != "loss"})
        if val_rows is not None:
            record.update(validation_losses(raw, val_rows, make_collate(processors), tc.batch_size, acc.device, tc.seed))
        state.update(epoch=epoch, step=step, elapsed_s=time.perf_counter() - t_start)
        record.update(lr=sched.get_last_lr()[0], samples_per_s=seen * world / max(1e-9, time.perf_counter() - t_epoch),
                      world_size=world, elapsed_s=round(state["elapsed_s"], 2))
        if acc.is_main_process:
            save_training_state(out, state_dict_cpu(raw), None, opt, state)
            save_pretrained(out, raw, cfg, pcfg, vocab, {"epoch": epoch, "rows": len(rows), "n_parameters": n_params})
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            shown = ["train_loss"] + [f"{o}_loss" for o in pcfg.objectives] + ["val_loss"]
            say("  ".join([f"epoch {epoch}"] + [f"{k} {record[k]:.4f}" for k in shown if k in record]))
        acc.wait_for_everyone()
        loop._after_epoch(state)          # test hook, as in training
        if stopped:
            break
    return {"epoch": epoch, "step": step, "stopped": stopped, "rows": len(rows), "n_parameters": n_params,
            "world_size": world, "elapsed_s": time.perf_counter() - t_start}


@torch.no_grad()
def validation_losses(pre: Pretrainer, rows, collate, batch_size: int, device, seed: int) -> dict:
    """{val_loss, val_<objective>_loss, ...} over held-out rows, eval mode. Masks and negatives come from
    a generator seeded the same every epoch (the training RNG is left untouched, so resuming stays exact)."""
    was_training = pre.training
    pre.eval()
    sums, seen = {}, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for a in range(0, len(rows), batch_size):
            idx = list(range(a, min(a + batch_size, len(rows))))
            for k, v in pre(to_device(collate(idx, rows), device)).items():
                if k.endswith("loss"):
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            seen += len(idx)
    pre.train(was_training)
    return {f"val_{k}": v / max(1, seen) for k, v in sums.items()}


def save_pretrained(out: Path, pre: Pretrainer, cfg: Config, pcfg: PretrainConfig, vocab: int | None, info: dict):
    """Weights, then config.json last (its presence marks a finished run)."""
    atomic_save_tensors(out / "model.safetensors", pre.encoder_state(),
                        metadata={"format": "polyfuse", "format_version": str(FORMAT_VERSION), "kind": "pretrained"})
    body = {"format_version": FORMAT_VERSION, "kind": "pretrained", "config": cfg.to_dict(),
            "pretrain": pcfg.to_dict(), "vocab_size": vocab, "n_outputs": None, "pretrained": info}
    atomic_write_text(out / "config.json", json.dumps(body, indent=2))
