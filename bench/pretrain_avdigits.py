"""Pretraining benchmark on ../shared/datasets/avdigits (image + audio digits): self-supervised
pretraining on all 6000 training rows without labels, then fine-tuning on 1% of the labels
(60 rows, 6 per digit), against training from scratch on the same 60 rows; each with and without
augmentation. Test accuracy on test.csv (1000 rows). Results go to docs/benchmarks.md by hand.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/pretrain_avdigits.py pretrain --out runs/bench_pre \
        --epochs 8 --max-minutes 30
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/pretrain_avdigits.py finetune --out runs/bench_pre \
        --seeds 0 1 2 [--epochs 120]
Fine-tuning runs that already have a result.json are not run again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "avdigits"
# 28x28 digits resized to 32: 8x8 patches through a conv stem; 8 kHz speech: 32 ms windows, 10 ms hop, 1 s crop.
ARCH = {"image": {"size": 32, "patch": 8, "stem": "conv", "mean": [0.13] * 3, "std": [0.31] * 3},
        "audio": {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 40, "max_seconds": 1.0,
                  "frames_per_token": 4, "stem": "conv"},
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4}}
SCHEMA = {"image": ["image"], "audio": ["audio"]}


def config(train: dict, augment: bool = False, label: str | None = None):
    from polyfuse.config import Config
    return Config.from_dict({**ARCH, "schema": {**SCHEMA, "label": label}, "train": train,
                             "augment": {"enabled": augment}})


def pretrain(args):
    from polyfuse.recipes.pretrain import pretrain_run
    cfg = config({"epochs": args.epochs, "batch_size": 128, "lr": 2e-3, "max_minutes": args.max_minutes})
    cfg = cfg.merged({"pretrain": {"objectives": args.objectives.split(",")}})
    t0 = time.time()
    summary = pretrain_run(cfg, DATA / "train.csv", Path(args.out) / "pre", progress=False)
    summary["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(summary))


def few_labels(seed: int, per_class: int) -> pd.DataFrame:
    """per_class training rows of each digit, drawn with this seed; paths made absolute."""
    df = pd.read_csv(DATA / "train.csv")
    rng = np.random.default_rng(seed)
    parts = [g.iloc[rng.choice(len(g), per_class, replace=False)] for _, g in df.groupby("label")]
    out = pd.concat(parts).reset_index(drop=True)
    for c in ("image", "audio"):
        out[c] = [str((DATA / v).resolve()) for v in out[c]]
    return out


def finetune(args):
    from polyfuse.recipes.train import train_run
    root = Path(args.out)
    test = pd.read_csv(DATA / "test.csv")
    y_test = test["label"].to_numpy()
    results = []
    for seed in args.seeds:
        rows = few_labels(seed, args.per_class)
        for init in (False, True):
            for augment in (False, True):
                name = f"seed{seed}_{'pre' if init else 'scratch'}{'_aug' if augment else ''}"
                out = root / "ft" / name
                if (out / "result.json").exists():
                    results.append(json.loads((out / "result.json").read_text()))
                    continue
                cfg = config({"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "seed": seed,
                              "patience": None}, augment, label="label")
                t0 = time.time()
                pred, _ = train_run(cfg, rows, None, out, progress=False,
                                    init_from=root / "pre" if init else None)
                t_train = time.time() - t0
                predicted = pred.predict(pred.encode(pred.read(test, DATA))).labels
                acc = float((np.array(predicted, dtype=int) == y_test).mean())
                r = {"seed": seed, "init": "pretrained" if init else "scratch", "augment": augment,
                     "test_accuracy": acc, "train_s": round(t_train, 1)}
                (out / "result.json").write_text(json.dumps(r))
                print(json.dumps(r), flush=True)
                results.append(r)
    df = pd.DataFrame(results)
    print(df.groupby(["init", "augment"])["test_accuracy"].agg(["mean", "std", "count"]).to_string())
    (root / "finetune_results.json").write_text(json.dumps(results, indent=2))


def main(argv=None):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))   # the machine is shared
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["pretrain", "finetune"])
    p.add_argument("--out", default="runs/bench_pre")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--objectives", default="contrastive,itm,masked_patch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args(argv)
    if a.stage == "pretrain":
        a.epochs = a.epochs or 10
        pretrain(a)
    else:
        a.epochs = a.epochs or 40
        finetune(a)


if __name__ == "__main__":
    sys.exit(main())
