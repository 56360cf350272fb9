"""How much silence a Whisper tower should hear after each clip (audio.tower_min_seconds), measured
as the issue's frozen probes are: the tower's features through Polyfuse's own processor and encoder
(data/pretrained.py, encoders/pretrained.py), mean-pooled over the clip's positions, then a
logistic regression per held-out speaker of avdigits' spoken digits (trained on the other five).

    python bench/offline_towers.py --out runs/towers          # once: the Whisper tiny.en folder
    python bench/whisper_context_probe.py --tower runs/towers/whisper-tiny.en --min-seconds 0,2,5,10

--per-digit N keeps each speaker's first N recordings of each digit (15: 900 clips) for a quick run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def clip_table(root: Path, per_digit: int) -> pd.DataFrame:
    """Every distinct recording in the set: file, digit, speaker (FSDD names files digit_speaker_index.wav)."""
    files = sorted(set(pd.read_csv(root / "train.csv").audio) | set(pd.read_csv(root / "test.csv").audio))
    rows = [(f, *Path(f).stem.split("_")) for f in files]
    df = pd.DataFrame(rows, columns=["file", "digit", "speaker", "index"]).astype({"digit": int, "index": int})
    return df[df["index"] < per_digit].reset_index(drop=True)


def pooled_features(tower: str, min_seconds: float, paths: list[Path], batch: int = 16) -> np.ndarray:
    from polyfuse.config import Config
    from polyfuse.data.pretrained import TowerAudioProcessor, TowerSource
    from polyfuse.encoders.pretrained import TowerEncoder
    cfg = Config.from_dict({"audio": {"encoder": tower, "tower_min_seconds": min_seconds, "max_seconds": 30.0},
                            "model": {"freeze_encoders": True, "feature_cache": False}})
    source = TowerSource(tower, with_weights=True)
    proc, enc = TowerAudioProcessor.create(cfg, source), TowerEncoder(cfg, "audio", source).eval()
    out = []
    with torch.no_grad():
        for a in range(0, len(paths), batch):
            h, mask = enc.features(proc.collate([proc(p) for p in paths[a:a + batch]]))      # (B, T, H), (B, T)
            out.append(((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "avdigits"))
    ap.add_argument("--min-seconds", default="0,2,5")
    ap.add_argument("--per-digit", type=int, default=15)
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    torch.set_num_threads(2)
    root = Path(args.data)
    df = clip_table(root, args.per_digit)
    for m in [float(x) for x in args.min_seconds.split(",")]:
        t0 = time.perf_counter()
        X = pooled_features(args.tower, m, [root / f for f in df.file])
        seconds = time.perf_counter() - t0
        acc = {}
        for speaker in sorted(df.speaker.unique()):
            train = (df.speaker != speaker).to_numpy()
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            acc[speaker] = round(float(probe.fit(X[train], df.digit[train]).score(X[~train], df.digit[~train])), 3)
        print(json.dumps({"min_seconds": m, "clips": len(df), "feature_seconds": round(seconds, 1),
                          "held_out_speaker_accuracy": acc, "mean": round(float(np.mean(list(acc.values()))), 3)}),
              flush=True)


if __name__ == "__main__":
    main()
