"""Pretraining step time, before vs after a change, side by side in one run (ratios, not absolute times).

Each source tree (`--src NAME=PATH/src`, a checkout of the commit to compare) runs `polyfuse pretrain`
as a subprocess with PYTHONPATH=that tree, on the same rows, config, seed and threads, in turn,
`--repeats` times; the log's samples_per_s and losses are compared. Datasets: avdigits (image +
audio, conv stems, contrastive + ITM + masked patch) and emoji (image + text, all four objectives).

    git worktree add ../pf_before 209494b
    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrain_step.py --src before=../pf_before/src --src after=src \
        --rows 1024 --epochs 1 --repeats 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrain_step.py --src before=../pf_before/src --src after=src \
        --dataset emoji --rows 1024 --epochs 1 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_avdigits import ARCH, DATA, SCHEMA  # noqa: E402

EMOJI = DATA.parent / "emoji"
# Emoji: 72 px RGBA drawings at 32 px, 8 px patches; descriptions through the scratch text encoder.
PINNED_STEM = {"emoji": {"stem": "linear"}}     # avdigits' ARCH sets its conv stem itself
EMOJI_ARCH = {"image": {"size": 32, "patch": 8}, "text": {"max_length": 32},
              "model": {"d_model": 64, "n_layers": 2, "n_heads": 4}}


def dataset(name: str, rows: int, tmp: Path) -> tuple[Path, dict, str]:
    """(table of `rows` rows with absolute paths, config, default objectives)."""
    if name == "emoji":
        df = pd.read_csv(EMOJI / "emoji.csv", dtype=str, keep_default_na=False)
        df = df[df.split == "train"].sample(n=min(rows, (df.split == "train").sum()), random_state=0)
        df["image"] = [str((EMOJI / v).resolve()) for v in df["image"]]
        df = df[["image", "text"]]
        cfg, objectives = {**EMOJI_ARCH, "schema": {"image": ["image"], "text": ["text"]}}, "contrastive,itm,mlm,masked_patch"
    else:
        df = pd.read_csv(DATA / "train.csv").sample(n=rows, random_state=0)
        for c in ("image", "audio"):
            df[c] = [str((DATA / v).resolve()) for v in df[c]]
        df = df[["image", "audio"]]
        cfg, objectives = {**ARCH, "schema": SCHEMA}, "contrastive,itm,masked_patch"
    df.to_csv(tmp / "rows.csv", index=False)
    return tmp / "rows.csv", cfg, objectives


def run(src: str, table: Path, cfg: Path, out: Path, objectives: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "polyfuse.cli", "pretrain", "--data", str(table), "--config",
                           str(cfg), "--out", str(out), "--objectives", objectives, "--quiet"],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {"wall_s": time.perf_counter() - t, "samples_per_s": sum(r["samples_per_s"] for r in log) / len(log),
            **{k: log[-1][k] for k in log[-1] if k.endswith("_loss") and k.count("_") <= 2}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", action="append", required=True, help="NAME=path/to/src")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dataset", choices=["avdigits", "emoji"], default="avdigits")
    ap.add_argument("--objectives", help="default: every objective the dataset's columns allow")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    table, arch, objectives = dataset(args.dataset, args.rows, tmp)
    cfg = tmp / "cfg.yaml"
    # Pinned to the values the oldest compared tree (209494b) defaults to, so that the plan (which
    # newer trees apply to every key a config leaves open) changes nothing but the code measured.
    pinned = {"augment": {"enabled": False},
              "image": {"mean": [0.5] * 3, "std": [0.5] * 3, **arch["image"], **PINNED_STEM.get(args.dataset, {})},
              "text": {**arch.get("text", {}), "vocab_size": 2000}}
    cfg.write_text(yaml.safe_dump({**arch, **pinned, "train": {"epochs": args.epochs, "batch_size": 128, "lr": 2e-3,
                                                               "seed": 0, "weight_decay": 0.01}}))
    results = {}
    for r in range(args.repeats):
        for spec in args.src:          # interleaved, so machine load hits every tree alike
            name, src = spec.split("=", 1)
            results.setdefault(name, []).append(run(src, table, cfg, tmp / f"{name}{r}", args.objectives or objectives))
    names = [s.split("=", 1)[0] for s in args.src]
    summary = {n: {k: sum(x[k] for x in v) / len(v) for k in v[0]} for n, v in results.items()}
    for n in names:
        s = summary[n]
        print(f"{n:>8}: {1000 * 128 / s['samples_per_s']:.0f} ms/step  {s['samples_per_s']:.0f} samples/s  "
              + "  ".join(f"{k} {v:.4f}" for k, v in s.items() if k.endswith("loss")))
    base = summary[names[0]]["samples_per_s"]
    for n in names[1:]:
        print(f"speedup {n} / {names[0]}: {summary[n]['samples_per_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
