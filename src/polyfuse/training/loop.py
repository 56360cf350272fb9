"""The training loop, on accelerate: the same code on 1 process or N (torchrun -> DDP).

Reproducibility: each epoch's order comes from a generator seeded with (seed, epoch), and the
global RNG (dropout, modality dropout) is saved in every checkpoint, so a resumed run takes
exactly the steps an unbroken one would.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from ..config import Config
from ..data.dataset import EncodedSet
from .checkpoint import load_training_state, save_training_state, state_dict_cpu
from .schedule import warmup_cosine


def make_accelerator(cfg: Config) -> Accelerator:
    # find_unused_parameters: a batch may lack a modality (absent cells, modality dropout), so
    # its encoder gets no gradient in that step; DDP must not wait for one.
    # cpu=True where there is no GPU: without it accelerate ignores torchrun's environment on a CPU
    # machine and every process trains alone, all writing the same run folder.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if cfg.train.bf16 else "no",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches for one epoch: a seeded permutation, padded so every rank gets as many."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    perm += perm[: per_rank * world - n]
    mine = perm[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def to_device(batch: dict, device) -> dict:
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings and position/modality vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos" not in name and ".tok." not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_loss_and_score(model, data: EncodedSet, collate, task: str, batch_size: int, device) -> dict:
    model.eval()
    total, n, correct, tp, fp, fn = 0.0, 0, 0, 0.0, 0.0, 0.0
    for i in range(0, len(data), batch_size):
        batch = to_device(collate(list(range(i, min(i + batch_size, len(data)))), data), device)
        out = model(batch)
        b = batch["label"].shape[0]
        total += float(out["loss"]) * b
        n += b
        if task == "classification":
            correct += int((out["logits"].argmax(-1) == batch["label"]).sum())
        elif task == "multilabel":
            pred, y = (out["logits"] > 0).float(), batch["label"]
            tp, fp, fn = tp + float((pred * y).sum()), fp + float((pred * (1 - y)).sum()), fn + float(((1 - pred) * y).sum())
    loss = total / n
    if task == "classification":
        return {"val_loss": loss, "val_accuracy": correct / n, "score": correct / n}
    if task == "multilabel":
        f1 = 2 * tp / max(1.0, 2 * tp + fp + fn)
        return {"val_loss": loss, "val_f1_micro": f1, "score": f1}
    return {"val_loss": loss, "score": -loss}


def fit(model: torch.nn.Module, train: EncodedSet, val: EncodedSet | None, collate, cfg: Config,
        run_dir: Path, accelerator: Accelerator, resume: bool = False,
        on_best: Callable[[torch.nn.Module, dict], None] | None = None, train_collate=None) -> dict:
    """Train; call on_best(model, record) (main process) whenever validation improves. Returns a summary.

    train_collate, when given, makes the training batches (augmentation); validation uses collate.
    """
    tc, task = cfg.train, cfg.schema.task
    acc = accelerator
    rank, world = acc.process_index, acc.num_processes
    steps_per_epoch = len(epoch_batches(len(train), tc.batch_size, tc.seed, 0, rank, world))
    total_steps = steps_per_epoch * tc.epochs
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total_steps, int(tc.warmup_ratio * total_steps)))

    state = {"epoch": 0, "step": 0, "best_score": None, "best_val_loss": None, "bad_epochs": 0, "best_epoch": None,
             "elapsed_s": 0.0, "stopped": None}
    best_weights = None
    if resume:
        saved = load_training_state(run_dir)
        if saved is not None:
            best_weights, state = saved["best"], restore(saved, model, opt, sched, acc.print)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    log_path = run_dir / "log.jsonl"

    t_start = time.perf_counter() - state["elapsed_s"]
    while state["epoch"] < tc.epochs and state["stopped"] is None:
        epoch = state["epoch"]
        model.train()
        batches = epoch_batches(len(train), tc.batch_size, tc.seed, epoch, rank, world)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=None if acc.is_main_process else True,
                   leave=False, mininterval=0.5)
        t_epoch, seen, loss_sum = time.perf_counter(), 0, 0.0
        for idx in bar:
            batch = to_device((train_collate or collate)(idx, train), acc.device)
            with acc.autocast():
                out = model(batch, modality_dropout=cfg.model.modality_dropout)
            optimizer_step(acc, model, opt, sched, out["loss"], tc.grad_clip)
            state["step"] += 1
            seen += len(idx) * world
            loss_sum += float(out["loss"].detach()) * len(idx)
            rate = seen / max(1e-9, time.perf_counter() - t_epoch)
            bar.set_postfix(loss=f"{loss_sum / max(1, seen / world):.4f}", samples_s=f"{rate:.0f}")
            if tc.max_minutes is not None and over_budget(acc, t_start, tc.max_minutes):
                state["stopped"] = "max_minutes"
                break
        state["epoch"] = epoch + 1
        record = {"epoch": epoch + 1, "step": state["step"], "train_loss": loss_sum / max(1, seen / world),
                  "lr": sched.get_last_lr()[0], "samples_per_s": seen / max(1e-9, time.perf_counter() - t_epoch),
                  "world_size": world}
        improved = True
        if val is not None:
            record.update(evaluate_loss_and_score(raw, val, collate, task, tc.batch_size * 2, acc.device))
            improved = _better(record, state)
        if improved:
            state.update(best_score=record.get("score"), best_val_loss=record.get("val_loss"), bad_epochs=0,
                         best_epoch=epoch + 1)
            best_weights = state_dict_cpu(raw)
            if acc.is_main_process and on_best is not None:
                on_best(raw, record)
        else:
            state["bad_epochs"] += 1
            if tc.patience is not None and state["bad_epochs"] >= tc.patience:
                state["stopped"] = "early_stopping"
        state["elapsed_s"] = time.perf_counter() - t_start
        record["elapsed_s"] = round(state["elapsed_s"], 2)
        if acc.is_main_process:
            save_training_state(run_dir, state_dict_cpu(raw), best_weights, opt, state)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            acc.print(_epoch_line(record))
        acc.wait_for_everyone()
        _after_epoch(state)

    if best_weights is not None:
        raw.load_state_dict(best_weights)
    return {**state, "steps_per_epoch": steps_per_epoch, "world_size": world}


def restore(saved: dict, model, opt, sched, say=print) -> dict:
    """Put a checkpoint (load_training_state) back: weights, optimizer, RNG, and the schedule moved on
    to its step. Returns the trainer state saved with it."""
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    state = saved["trainer"]
    with warnings.catch_warnings():     # fast-forwarding the schedule, not training
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state["step"]):
            sched.step()
    say(f"resuming after epoch {state['epoch']} (step {state['step']})")
    return state


def optimizer_step(acc: Accelerator, model, opt, sched, loss: torch.Tensor, grad_clip: float):
    """Backward, clip, step, advance the schedule, clear gradients: one step, shared by every recipe."""
    acc.backward(loss)
    if grad_clip:
        acc.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _better(record: dict, state: dict) -> bool:
    """A higher validation score, or the same score at a lower validation loss: on a small validation
    set accuracy ties are common, and the lower loss is the better-calibrated, later model."""
    best = state["best_score"]
    if best is None or record["score"] > best + 1e-9:
        return True
    return abs(record["score"] - best) <= 1e-9 and record["val_loss"] < state["best_val_loss"]


def over_budget(acc: Accelerator, t_start: float, max_minutes: float) -> bool:
    over = torch.tensor(float(time.perf_counter() - t_start > max_minutes * 60), device=acc.device)
    if acc.num_processes > 1:    # every rank must stop at the same step, or DDP hangs
        over = acc.reduce(over, reduction="sum")
    return bool(over > 0)


def _epoch_line(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"train_loss {r['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in r.items() if k.startswith("val_")]
    parts.append(f"{r['samples_per_s']:.0f} samples/s")
    return "  ".join(parts)


def _after_epoch(state: dict):
    """Hook for tests (interrupt a run after an epoch to check that --resume continues it exactly)."""
