"""Magnitude pruning of every linear layer's weights, an optional short fine-tune, and the score
before and after. The result is an ordinary run folder (zeros in the weights), servable and exportable."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import ConfigError
from ..training.loop import epoch_batches, to_device

FINETUNE_LR_SCALE = 0.1     # fine-tuning a pruned model: a tenth of the run's training learning rate
MAIN_METRIC = {"classification": "accuracy", "multilabel": "micro_f1", "regression": "r2"}


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all linear layers."""
    ws = [m.weight for m in linear_layers(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws)))


def prune_linear(model: nn.Module, amount: float):
    """Zero the `amount` smallest-magnitude weights of each linear layer (the masks stay until `finalize`)."""
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"--amount must be in (0, 1), got {amount}")
    for m in linear_layers(model):
        prune.l1_unstructured(m, "weight", amount=amount)


def finalize(model: nn.Module):
    """Fold the masks into the weights, so the state dict has plain `weight` tensors again."""
    for m in linear_layers(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def finetune(predictor, data, epochs: int, say=print):
    """A short fine-tune with the pruning masks in place (pruned weights stay zero)."""
    cfg, model = predictor.cfg, predictor.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=cfg.train.lr * FINETUNE_LR_SCALE, weight_decay=cfg.train.weight_decay)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in epoch_batches(len(data), cfg.train.batch_size, cfg.train.seed, epoch, 0, 1):
            loss = model(to_device(predictor.collate(idx, data), "cpu"))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(idx)
        say(f"fine-tune epoch {epoch + 1}/{epochs}: train loss {total / len(data):.4f}")
    model.eval()


def score(predictor, data) -> float:
    from ..evaluation.evaluate import task_metrics
    return task_metrics(predictor, data, predictor.outputs(data))[MAIN_METRIC[predictor.labels.task]]


def prune_run(run_dir, amount: float, out, data=None, eval_data=None, finetune_epochs: int = 0,
              say=print) -> dict:
    from ..inference import Predictor
    p = Predictor.load(run_dir, "cpu")
    metric = MAIN_METRIC[p.labels.task]
    if finetune_epochs and data is None:
        raise ConfigError("--finetune-epochs needs --data (a labelled table to fine-tune on)")
    train = p.encode(p.read(data), with_labels=True) if data is not None else None
    test = p.encode(p.read(eval_data), with_labels=True) if eval_data is not None else train
    report = {"amount": amount, "metric": metric}
    if test is not None:
        report["before"] = score(p, test)
    prune_linear(p.model, amount)
    if test is not None:
        report["after_pruning"] = score(p, test)
    if finetune_epochs:
        finetune(p, train, finetune_epochs, say)
        report["after_finetune"] = score(p, test)
    finalize(p.model)
    report["sparsity"] = sparsity(p.model)
    p.save(Path(out), {"pruned": report})
    if test is not None:
        line = f"{metric}: before {report['before']:.4f}, after pruning {report['after_pruning']:.4f}"
        if finetune_epochs:
            line += f", after {finetune_epochs} fine-tune epoch(s) {report['after_finetune']:.4f}"
        say(line + f" (on {len(test)} rows)")
    say(f"linear-layer sparsity {report['sparsity']:.3f}; pruned run folder {out}")
    return report
