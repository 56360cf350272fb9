"""polyfuse demo: synthetic text+image+audio rows -> train -> evaluate -> fused vs single-modality accuracy."""
from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("demo", help="train and evaluate on a built-in synthetic dataset (under a minute)")
    p.add_argument("--out", default="runs/demo", help="run folder (data goes to OUT/data)")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)


def run(args):
    from ..config import Config
    from ..data.synthetic import write_splits
    from ..evaluation.evaluate import evaluate, format_table, single_modality_scores
    from ..recipes.train import train_run
    from ..runfolder import RunFolder

    t0 = time.perf_counter()
    out = Path(args.out)
    folder = RunFolder(out)
    folder.clear(folder.CONFIG, folder.CHECKPOINT, folder.LOG, folder.WEIGHTS)   # the demo always starts fresh
    print(f"writing {args.rows} synthetic rows (text, PNG images, WAV audio) to {out / 'data'}")
    paths = write_splits(out / "data", n=args.rows, seed=args.seed)
    cfg = Config.from_dict({
        "schema": {"text": ["caption"], "image": ["image"], "audio": ["audio"], "label": "label"},
        "model": {"size": "tiny", "modality_dropout": 0.1},
        "audio": {"n_mels": 32, "max_seconds": 1.0},
        "train": {"epochs": args.epochs, "seed": args.seed, "lr": 1e-3, "patience": None},
    })
    predictor, summary = train_run(cfg, paths["train"], paths["val"], out)
    test = predictor.encode(predictor.read(paths["test"]), with_labels=True)
    result = evaluate(predictor, test)
    result["data"] = str(paths["test"])
    folder.write_metrics(result)
    print("\ntest set:")
    print(format_table(result, "classification"))
    scores = single_modality_scores(result, predictor.schema.modalities(), "accuracy")
    print("\naccuracy  " + "  ".join(f"{k}: {v:.3f}" for k, v in scores.items()))
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Try:\n"
          f"  polyfuse evaluate {out} --data {paths['test']}\n"
          f"  polyfuse predict  {out} --data {paths['test']} --out {out / 'predictions.csv'}\n"
          f"  polyfuse info     {out}")
