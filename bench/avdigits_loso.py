"""avdigits leave-one-speaker-out: Polyfuse's defaults on a speaker they never heard.

For each speaker S: train on every train.csv row whose recording is not S's; test on every row
(train.csv and test.csv) whose recording is S's. Their images were never trained on either (a row
is left out of training whole). Each fold runs the real CLI with no config file:

    polyfuse train --train FOLD/train.csv --label label --image image --audio audio --max-minutes M
    polyfuse evaluate RUN --data FOLD/test.csv

and reports fused accuracy, each modality alone (the ablations: without_audio = image alone), the
epochs run and the share of the budget used.

    python bench/avdigits_loso.py                          # every speaker, 10 minutes each
    python bench/avdigits_loso.py --speakers theo --max-minutes 3
    python bench/avdigits_loso.py --extra "--group-by speaker"   # flags added to every train
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POLYFUSE = [sys.executable, "-m", "polyfuse.cli"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "avdigits"))
    p.add_argument("--out", default=str(ROOT / "runs" / "loso"))
    p.add_argument("--speakers", nargs="+", help="folds to run (default: every speaker)")
    p.add_argument("--max-minutes", type=float, default=10.0)
    p.add_argument("--extra", default="", help="more flags for polyfuse train")
    args = p.parse_args(argv)

    data, out = Path(args.data).resolve(), Path(args.out)
    tables = []
    for name in ("train", "test"):
        df = pd.read_csv(data / f"{name}.csv")
        df["image"] = [str(data / v) for v in df["image"]]
        df["audio"] = [str(data / v) for v in df["audio"]]
        df["source"] = name
        tables.append(df)
    train_all, everything = tables[0], pd.concat(tables, ignore_index=True)
    speakers = args.speakers or sorted(train_all["speaker"].unique())
    results = {}
    for s in speakers:
        fold = out / s
        fold.mkdir(parents=True, exist_ok=True)
        train_all[train_all["speaker"] != s].to_csv(fold / "train.csv", index=False)
        everything[everything["speaker"] == s].to_csv(fold / "test.csv", index=False)
        run = fold / "run"
        if not (run / "config.json").exists():
            cmd = POLYFUSE + ["train", "--train", str(fold / "train.csv"), "--label", "label", "--image", "image",
                              "--audio", "audio", "--max-minutes", str(args.max_minutes), "--out", str(run),
                              "--quiet"] + shlex.split(args.extra)
            print("$", " ".join(cmd[2:]), flush=True)
            with open(fold / "train.log", "w") as log:
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        subprocess.run(POLYFUSE + ["evaluate", str(run), "--data", str(fold / "test.csv"), "--out",
                                   str(fold / "test_metrics.json")], check=True, stdout=subprocess.DEVNULL)
        m = json.loads((fold / "test_metrics.json").read_text())
        plan = json.loads((run / "plan.json").read_text())["outcome"]
        abl = m["modality_ablation"]
        results[s] = {"fused": m["accuracy"], "image_alone": abl["without_audio"]["accuracy"],
                      "audio_alone": abl["without_image"]["accuracy"], "test_rows": m["n"],
                      "epochs": plan["epochs"], "stopped": plan["stopped"], "budget_used": plan.get("budget_used")}
        print(s, results[s], flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| held-out speaker | test rows | fused | image alone | audio alone | fused above both | epochs | budget used |")
    print("|---|---|---|---|---|---|---|---|")
    for s, r in results.items():
        above = r["fused"] > max(r["image_alone"], r["audio_alone"])
        print(f"| {s} | {r['test_rows']} | {r['fused']:.3f} | {r['image_alone']:.3f} | {r['audio_alone']:.3f} | "
              f"{'yes' if above else 'no'} | {r['epochs']} ({r['stopped']}) | {r['budget_used']:.0%} |")
    mean = sum(r["fused"] for r in results.values()) / len(results)
    print(f"| mean | | {mean:.3f} | | | | | |")


if __name__ == "__main__":
    main()
