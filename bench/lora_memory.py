"""Peak memory of generation training with a pretrained decoder (issue 15: LoRA on the 135M
decoder at batch 8 must peak under 4 GB RSS).

Runs the real CLI in a child process per setting, on a few emoji rows (image -> description),
batch 8, one epoch, and reads the child's peak resident set size from the kernel
(`getrusage(RUSAGE_CHILDREN)` after each child alone, so one setting's peak never hides another's):

    polyfuse train --train ROWS.csv --task generation --label text --image image \\
        --decoder DECODER --set generate.decoder_train=SETTING --batch-size 8 --epochs 1 ...

    .venv/bin/python bench/lora_memory.py --decoder runs/towers/smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EMOJI = ROOT / ".." / "shared" / "datasets" / "emoji"


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """Run cmd in a fresh child (via a wrapper process, so RUSAGE_CHILDREN is this child's alone)."""
    probe = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t]))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout
    kb, seconds = json.loads(out.strip().splitlines()[-1])
    return kb / 1024 ** 2, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--decoder", required=True, help="causal LM folder (bench/offline_towers.py builds SmolLM2-135M)")
    p.add_argument("--out", default=str(ROOT / "runs" / "lora_memory"))
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--settings", nargs="+", default=["lora", "frozen"])
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(EMOJI / "emoji.csv")
    df = df[df.split == "train"].head(args.rows).copy()
    df["image"] = [str((EMOJI / v).resolve()) for v in df["image"]]
    table = out / "rows.csv"
    df[["image", "text"]].to_csv(table, index=False)
    results = {}
    for setting in args.settings:
        cmd = [sys.executable, "-m", "polyfuse.cli", "train", "--train", str(table), "--task", "generation",
               "--label", "text", "--image", "image", "--decoder", args.decoder, "--batch-size", "8",
               "--epochs", "1", "--set", f"generate.decoder_train={setting}", "--set", "train.patience=null",
               "--out", str(out / setting), "--quiet"]
        gb, seconds = peak_of(cmd)
        results[setting] = {"peak_rss_gb": round(gb, 2), "seconds": round(seconds, 1)}
        print(setting, results[setting], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
