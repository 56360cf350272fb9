"""The same trained weights predicted two ways: the fused pass alone, and the ensemble of the fused
pass with each modality alone (model.ensemble, a prediction-time switch). Scores both with
`evaluate` (fused accuracy and the modality ablations) on a labelled table.

    python bench/predict_modes.py runs/loso/*/run --data-name test.csv     # each run's ../test.csv
    python bench/predict_modes.py RUN --data TEST.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from polyfuse.evaluation.evaluate import evaluate
from polyfuse.inference import Predictor


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", help="one labelled table for every run")
    p.add_argument("--data-name", help="or a table of this name beside each run folder")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    results = {}
    print("| run | prediction | fused | without audio (image alone) | without image (audio alone) | fused above both |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        pred = Predictor.load(run)
        table = args.data or str(Path(run).parent / args.data_name)
        data = pred.encode(pred.read(table), with_labels=True)
        for ensemble in (False, True):
            pred.model.ensemble = ensemble
            m = evaluate(pred, data)
            abl = {k: v["accuracy"] for k, v in m["modality_ablation"].items()}
            key = f"{run} {'ensemble' if ensemble else 'fused pass'}"
            results[key] = {"accuracy": m["accuracy"], **abl}
            above = m["accuracy"] > max(abl.values())
            print(f"| {run} | {'ensemble' if ensemble else 'fused pass'} | {m['accuracy']:.4f} | "
                  + " | ".join(f"{abl[k]:.4f}" for k in sorted(abl)) + f" | {'yes' if above else 'no'} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
