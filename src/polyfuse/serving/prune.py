"""Magnitude pruning of every linear layer's weights, an optional short fine-tune, and the score
before and after. The result is an ordinary run folder (zeros in the weights), servable and exportable."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn
from torch.nn.utils import prune

from ..errors import ConfigError
from ..training.trainer import Trainer, make_accelerator

FINETUNE_LR_SCALE = 0.1     # fine-tuning a pruned model: a tenth of the run's training learning rate


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


def finetune(predictor, data, epochs: int, progress: bool = False) -> list[dict]:
    """A short fine-tune on the one Trainer, with the pruning masks in place (pruned weights stay zero):
    the run's training settings at a tenth of its learning rate, no early stopping, no checkpoints."""
    tc = dataclasses.replace(predictor.cfg.train, epochs=epochs, patience=None, max_minutes=None)
    trainer = Trainer(tc, make_accelerator(), lr_scale=FINETUNE_LR_SCALE, progress=progress, desc="fine-tune",
                      data=predictor.cfg.data)
    trainer.fit(predictor.model, len(data), lambda idx: predictor.collate(idx, data),
                lambda m, b: {"loss": m(b)["loss"]})
    predictor.model.cpu().eval()
    return trainer.log


def prune_run(run_dir, amount: float, out, data=None, eval_data=None, finetune_epochs: int = 0,
              say=print) -> dict:
    from ..evaluation.evaluate import headline as score
    from ..evaluation.metrics import HEADLINE
    from ..inference import Predictor
    p = Predictor.load(run_dir, "cpu")
    metric = HEADLINE[p.labels.task]
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
        finetune(p, train, finetune_epochs)
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
