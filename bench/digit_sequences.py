"""Spoken digit sequences from avdigits (issue 15): 3-7 recordings of one speaker joined by short
silences into one clip, whose text is the digits ("4 0 7"); test speakers are never trained on.

Each recording is used as it is (8 kHz mono FSDD takes); silences are 0.1-0.4 s of zeros. Train
rows use takes 5-49 of the training speakers, test rows takes of the held-out speakers only, so
neither the voice nor the recordings of a test row were heard in training. Nothing is copied into
the repository: the clips go under --out (runs/ is ignored by git).

    .venv/bin/python bench/digit_sequences.py --out runs/digitseq --test-speakers george
    polyfuse train --train runs/digitseq/train.csv --task generation --label text --audio audio \\
        --decoder scratch --max-minutes 10 --out runs/digitseq/run
    polyfuse evaluate runs/digitseq/run --data runs/digitseq/test.csv --report
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "avdigits"
NAME = re.compile(r"(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$")


def recordings(folder: Path) -> pd.DataFrame:
    rows = [{"path": p, **{k: (int(v) if k != "speaker" else v) for k, v in m.groupdict().items()}}
            for p in sorted((folder / "audio").glob("*.wav")) if (m := NAME.search(p.name))]
    return pd.DataFrame(rows)


def make_rows(recs: pd.DataFrame, n: int, out: Path, prefix: str, rng) -> list[dict]:
    """n clips, each from one speaker (drawn uniformly among recs' speakers)."""
    rows, speakers = [], sorted(recs.speaker.unique())
    by = {(s, d): g.path.tolist() for (s, d), g in recs.groupby(["speaker", "digit"])}
    for i in range(n):
        speaker = speakers[rng.integers(len(speakers))]
        digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 8)))]
        pieces, rate = [], None
        for k, d in enumerate(digits):
            options = by[(speaker, d)]
            wav, sr = sf.read(options[rng.integers(len(options))], dtype="float32")
            rate = rate or sr
            if sr != rate:
                raise SystemExit(f"mixed sample rates ({sr} vs {rate}) for {speaker}")
            if k:
                pieces.append(np.zeros(int(rate * rng.uniform(0.1, 0.4)), np.float32))
            pieces.append(wav if wav.ndim == 1 else wav.mean(1))
        path = out / "audio" / f"{prefix}{i:05d}.wav"
        sf.write(path, np.concatenate(pieces), rate, subtype="PCM_16")
        rows.append({"audio": str(path.relative_to(out)), "text": " ".join(map(str, digits)), "speaker": speaker})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", default="runs/digitseq")
    p.add_argument("--test-speakers", nargs="+", default=["george"])
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--test-rows", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    recs = recordings(Path(args.data))
    held = recs.speaker.isin(args.test_speakers)
    if not held.any():
        raise SystemExit(f"no recordings of {args.test_speakers}; speakers: {sorted(recs.speaker.unique())}")
    rng = np.random.default_rng(args.seed)
    train = make_rows(recs[~held & (recs["take"] >= 5)], args.train_rows, out, "train_", rng)
    test = make_rows(recs[held], args.test_rows, out, "test_", rng)
    pd.DataFrame(train).to_csv(out / "train.csv", index=False)
    pd.DataFrame(test).to_csv(out / "test.csv", index=False)
    print(f"wrote {len(train)} training clips ({', '.join(sorted(recs[~held].speaker.unique()))}) and "
          f"{len(test)} test clips ({', '.join(args.test_speakers)}) under {out}")


if __name__ == "__main__":
    main()
