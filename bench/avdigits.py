"""avdigits benchmark: image-only, audio-only and fused test accuracy, each with its train wall time.

Every model is trained and evaluated through the real CLI (`polyfuse train`, `polyfuse evaluate`),
with configs/avdigits.yaml. Early stopping uses a validation split of train.csv only, held out by
audio recording (a recording is used by 2-3 training rows; a row split would leak the same
recording into validation). test.csv is used only by the final `polyfuse evaluate`.

    python bench/avdigits.py                                  # image, audio, fused (late, attention)
    python bench/avdigits.py --fusions attention concat late  # fused with each fusion
    python bench/avdigits.py --train-rows 1000 --epochs 2     # a quick smoke run

Wall time is measured around each `polyfuse train` (decoding included); CPU time is the child's
user+sys, which a machine shared with other jobs does not inflate.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POLYFUSE = [sys.executable, "-m", "polyfuse.cli"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "avdigits"),
                   help="folder holding train.csv and test.csv")
    p.add_argument("--config", default=str(ROOT / "configs" / "avdigits.yaml"))
    p.add_argument("--out", default=str(ROOT / "runs" / "avdigits"), help="split tables and run folders")
    p.add_argument("--models", nargs="+", default=["image", "audio", "fused"], choices=["image", "audio", "fused"])
    # late first: it is the one that meets the target here; attention is the library default.
    p.add_argument("--fusions", nargs="+", default=["late", "attention"], choices=["attention", "concat", "late"],
                   help="fusion(s) for the fused model")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train.csv recordings held out")
    p.add_argument("--train-rows", type=int, help="subsample the training split (quick runs)")
    p.add_argument("--epochs", type=int, help="override the config's train.epochs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def write_splits(data: Path, out: Path, val_fraction: float, seed: int, train_rows: int | None) -> dict:
    """train/val split of train.csv by audio recording; paths made absolute (tables live in `out`)."""
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    for df in (train, test):
        for c in ("image", "audio"):
            df[c] = [str((data / v).resolve()) for v in df[c]]
    recordings = np.array(sorted(train["audio"].unique()))
    np.random.default_rng(seed).shuffle(recordings)
    held = set(recordings[: int(round(val_fraction * len(recordings)))])
    is_val = train["audio"].isin(held)
    fit, val = train[~is_val], train[is_val]
    if train_rows:
        fit = fit.sample(n=min(train_rows, len(fit)), random_state=seed).sort_index()
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.csv" for name in ("train", "val", "test")}
    for name, df in (("train", fit), ("val", val), ("test", test)):
        df.to_csv(paths[name], index=False)
    return paths


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run cmd; (wall seconds, CPU seconds of the child). Raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def show(cmd: list[str]) -> str:
    return "polyfuse " + " ".join(shlex.quote(c) for c in cmd[len(POLYFUSE):])


def run_one(name: str, fusion: str, paths: dict, args) -> dict:
    out = Path(args.out) / (name if name != "fused" else f"fused_{fusion}")
    if out.exists():
        import shutil
        shutil.rmtree(out)     # a fresh run each time: train refuses a folder holding a run
    cols = {"image": ["--image", "image"], "audio": ["--audio", "audio"],
            "fused": ["--image", "image", "--audio", "audio", "--fusion", fusion]}[name]
    train = POLYFUSE + ["train", "--train", str(paths["train"]), "--val", str(paths["val"]), "--label", "label",
                        *cols, "--config", args.config, "--out", str(out), "--quiet"]
    if args.epochs:
        train += ["--epochs", str(args.epochs)]
    print(f"\n$ {show(train)}", flush=True)
    wall, cpu = timed(train)
    evaluate = POLYFUSE + ["evaluate", str(out), "--data", str(paths["test"])]
    print(f"$ {show(evaluate)}", flush=True)
    eval_wall, _ = timed(evaluate)
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # The epoch whose weights were kept (ties on the score are broken by validation loss).
    kept = json.loads((out / "checkpoint" / "trainer.json").read_text())["best_epoch"]
    best = next(r for r in log if r["epoch"] == kept)
    row = {"model": name, "fusion": fusion if name == "fused" else "-", "test_accuracy": metrics["accuracy"],
           "val_accuracy": best.get("val_accuracy"), "epochs": len(log), "best_epoch": best["epoch"],
           "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "eval_wall_s": round(eval_wall, 1),
           "train_command": show(train), "evaluate_command": show(evaluate)}
    abl = metrics.get("modality_ablation", {})
    for key, m in abl.items():
        row[f"test_accuracy_{key}"] = m["accuracy"]
    return row


def main(argv=None):
    args = parse_args(argv)
    args.config = str(Path(args.config).resolve())
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs a spinning
    # thread burns the core the other one is waiting for (6x slower here); on an idle machine it
    # changes nothing. An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    paths = write_splits(Path(args.data).resolve(), Path(args.out), args.val_fraction, args.seed, args.train_rows)
    n = {k: len(pd.read_csv(v)) for k, v in paths.items()}
    print(f"rows: train {n['train']}, validation {n['val']} (held out by recording), test {n['test']}; "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, cores {os.cpu_count()}")
    jobs = [(m, f) for m in args.models for f in (args.fusions if m == "fused" else ["-"])]
    rows = [run_one(m, f, paths, args) for m, f in jobs]
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n" + format_rows(rows))


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<8}{'fusion':<11}{'test acc':>9}{'val acc':>9}{'epochs':>8}{'train wall':>12}"
             f"{'train cpu':>11}   fused model without image / without audio"]
    for r in rows:
        extra = ""
        if "test_accuracy_without_image" in r:
            extra = f"   {r['test_accuracy_without_image']:.4f} / {r['test_accuracy_without_audio']:.4f}"
        lines.append(f"{r['model']:<8}{r['fusion']:<11}{r['test_accuracy']:>9.4f}{r['val_accuracy'] or 0:>9.4f}"
                     f"{r['best_epoch']:>4}/{r['epochs']:<3}{r['train_wall_s'] / 60:>10.1f} m"
                     f"{r['train_cpu_s'] / 60:>9.1f} m{extra}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
