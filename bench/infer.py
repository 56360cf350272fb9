"""Inference variants on avdigits: eager fp32 vs ONNX fp32 vs ONNX int8 vs pruned (30%, 1 fine-tune epoch).

Trains a small image+audio model on a subset of train.csv (once; reused from --out), exports it with
`polyfuse export --quantize int8` semantics, prunes it, then reports for each variant the model
latency at batch 1 and 32 (collated inputs, preprocessing excluded: it is the same for all four)
and accuracy on test.csv.

    nice -n 10 python bench/infer.py                        # 2000 training rows, 4 epochs, 1 thread
    nice -n 10 python bench/infer.py --train-rows 500 --epochs 1 --repeats 20   # smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

# Sized for minutes on 2 CPU cores; MNIST statistics and FSDD's own 8 kHz rate.
CONFIG = {
    "schema": {"image": ["image"], "audio": ["audio"], "label": "label", "task": "classification"},
    "image": {"size": 28, "patch": 4, "stem": "conv", "mean": [0.13] * 3, "std": [0.31] * 3},
    "audio": {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 40, "max_seconds": 1.2,
              "frames_per_token": 4, "stem": "conv"},
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "modality_dropout": 0.3},
    "train": {"batch_size": 64, "lr": 0.002, "weight_decay": 0.05, "label_smoothing": 0.1, "patience": None},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "avdigits"))
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-serving"))
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--prune-amount", type=float, default=0.3)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=200, help="timed calls at batch 1 (a tenth at batch 32)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ONNX Runtime alike")
    return p.parse_args(argv)


def tables(data: Path, out: Path, train_rows: int) -> dict:
    """A seeded subset of train.csv and all of test.csv, with absolute paths, written under out."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, n in (("train", train_rows), ("test", None)):
        df = pd.read_csv(data / f"{name}.csv")
        if n:
            df = df.sample(n=min(n, len(df)), random_state=0).sort_index()
        for c in ("image", "audio"):
            df[c] = [str((data / v).resolve()) for v in df[c]]
        paths[name] = out / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def prepare(args) -> tuple[Path, dict]:
    """Train, export and prune once; later runs reuse the folders."""
    from polyfuse.config import Config
    from polyfuse.serving.export import export_onnx
    from polyfuse.serving.prune import prune_run
    from polyfuse.recipes.train import train_run
    from polyfuse.runfolder import RunFolder
    out = Path(args.out)
    paths = tables(Path(args.data), out, args.train_rows)
    run = out / "run"
    if not RunFolder(run).is_finished():
        cfg = Config.from_dict({**CONFIG, "train": {**CONFIG["train"], "epochs": args.epochs}})
        t = time.perf_counter()
        train_run(cfg, paths["train"], None, run, progress=False)
        print(f"trained on {args.train_rows} rows x {args.epochs} epochs in {time.perf_counter() - t:.0f} s")
    if not (out / "onnx" / "model.int8.onnx").exists():
        export_onnx(run, out / "onnx", "int8")
    if not RunFolder(out / "pruned").is_finished():
        prune_run(run, args.prune_amount, out / "pruned", data=paths["train"], finetune_epochs=args.finetune_epochs)
    return out, paths


def latency_ms(backend, rows: list, batch: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of one model call on `batch` pre-collated rows: (wall clock, CPU time).

    With one intra-op thread the call computes in the calling thread, so its thread CPU time is
    the latency the call would have on an idle core, whatever else the machine is running.
    """
    flats = [backend.collate(rows[i:i + batch]) for i in range(0, batch * repeats, batch)]
    backend.forward(flats[0])                                       # warm-up
    wall, cpu = [], []
    for flat in flats:
        t, c = time.perf_counter(), time.thread_time()
        backend.forward(flat)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - t) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def accuracy(backend, rows: list, labels: np.ndarray) -> float:
    probs = np.concatenate([backend.run(rows[i:i + 64])["probabilities"] for i in range(0, len(rows), 64)])
    return float((probs.argmax(1) == labels).mean())


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from polyfuse.serving.backend import EagerBackend, OnnxBackend
    out, paths = prepare(args)
    eager = EagerBackend(out / "run")
    from polyfuse.inference import Predictor
    p = Predictor(eager.cfg, eager.processors, eager.labels, eager.graph.model)
    enc = p.encode(p.read(paths["test"]), with_labels=True)
    rows, labels = enc.inputs, torch.stack(list(enc.labels)).numpy()
    pool = (rows * (1 + 32 * max(1, args.repeats // 10) // len(rows)))  # enough rows for the batch-32 calls
    variants = {"eager fp32": eager,
                "ONNX fp32": OnnxBackend(out / "onnx", "model.onnx", args.threads),
                "ONNX int8": OnnxBackend(out / "onnx", "model.int8.onnx", args.threads),
                f"pruned {args.prune_amount:.0%} (eager)": EagerBackend(out / "pruned")}
    results = {}
    for name, b in variants.items():
        results[name] = {"b1": latency_ms(b, pool, 1, args.repeats),
                         "b32": latency_ms(b, pool, 32, max(1, args.repeats // 10)),
                         "acc": accuracy(b, rows, labels)}
    base = results["eager fp32"]
    print(f"\n{len(rows)} test rows; {args.threads} thread(s); median of one model call, CPU time "
          "(wall clock in brackets)\n")
    print("| variant | batch 1 (ms) | batch 32 (ms) | speed-up at batch 1 (CPU) | test accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['b1'][1]:.2f} ({r['b1'][0]:.2f}) | {r['b32'][1]:.2f} ({r['b32'][0]:.2f}) | "
              f"{base['b1'][1] / r['b1'][1]:.2f}x | {100 * r['acc']:.2f}% |")
    q = results["ONNX int8"]
    print(f"\nint8 vs eager fp32 at batch 1: {base['b1'][1] / q['b1'][1]:.2f}x faster (CPU time), "
          f"{base['b1'][0] / q['b1'][0]:.2f}x (wall clock); accuracy {100 * (q['acc'] - base['acc']):+.2f} points")


if __name__ == "__main__":
    main()
