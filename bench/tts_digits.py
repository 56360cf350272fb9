"""Spoken digits in voices nobody tuned for: many synthetic speakers (espeak-ng), whole voices held out.

The shared avdigits set has six speakers, all adult men, and every audio default was measured on
it. This script makes a set it knows nothing of: V voices, each an accent (en-us, en-gb, Scottish,
Caribbean, ...), a voice variant (male, female, old, child-like, robotic: espeak-ng's variants),
a base pitch and a speaking rate; every take of a digit jitters pitch and rate a little, and
gets a random level, a little noise and some silence before and after. Test voices use variants
that no training voice uses, so a test voice is new in kind, not only in pitch.

Two tables per split, both with a `speaker` column to hold out by:
  digits/   audio, digit, speaker            one digit per clip (classification)
  sequences/ audio, text, speaker            3-7 takes of one voice joined by 0.1-0.4 s of silence,
                                             text "4 0 7" (transcription, as bench/digit_sequences.py)

    apt-get install espeak-ng           # Debian; not a Python dependency, bench only
    .venv/bin/python bench/tts_digits.py --out runs/tts
    polyfuse train --train runs/tts/digits/train.csv --label digit --audio audio --group-by speaker \\
        --max-minutes 5 --out runs/tts-digits && polyfuse evaluate runs/tts-digits --data runs/tts/digits/test.csv
    polyfuse train --train runs/tts/sequences/train.csv --task generation --label text --audio audio \\
        --decoder scratch --group-by speaker --max-minutes 10 --out runs/tts-seq
    polyfuse evaluate runs/tts-seq --data runs/tts/sequences/test.csv

Nothing is copied into the repository: everything goes under --out (runs/ is ignored by git).
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd", "en-gb-x-gbclan"]
# espeak-ng voice variants (espeak-ng-data/voices/!v): the first TRAIN_VARIANTS train, the rest are test-only.
TRAIN_VARIANTS = 24
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "klatt", "klatt2", "Alex", "Andy",
            "adam", "david", "edward", "linda", "max", "paul", "robert", "steph", "john", "Annie",
            "f4", "f5", "m8", "klatt3", "belinda", "michel", "aunty", "grandpa", "Mike", "anika"]


def speak(word: str, voice: dict, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    cmd = ["espeak-ng", "-v", f"{voice['accent']}+{voice['variant']}", "-p", str(pitch), "-s", str(rate),
           "--stdout", word]
    wav, sr = sf.read(io.BytesIO(subprocess.run(cmd, check=True, capture_output=True).stdout), dtype="float32")
    return (wav if wav.ndim == 1 else wav.mean(1)), sr


def take(word: str, voice: dict, rng) -> tuple[np.ndarray, int]:
    """One recording: the voice with jittered pitch and rate, a random level, noise, and silence around it."""
    wav, sr = speak(word, voice, int(np.clip(voice["pitch"] + rng.integers(-6, 7), 0, 99)),
                    int(voice["rate"] * rng.uniform(0.9, 1.1)))
    peak = np.abs(wav).max() or 1.0
    wav = wav / peak * 10 ** (rng.uniform(-20, -3) / 20)                        # level: -20 to -3 dBFS peak
    pad = [np.zeros(int(sr * rng.uniform(0.0, 0.15)), np.float32) for _ in range(2)]
    wav = np.concatenate([pad[0], wav, pad[1]])
    rms = np.sqrt(np.mean(wav ** 2)) + 1e-9
    noise = rng.standard_normal(len(wav)).astype(np.float32) * rms * 10 ** (-rng.uniform(20, 40) / 20)
    return (wav + noise).astype(np.float32), sr


def voices(n: int, variants: list[str], rng, prefix: str) -> list[dict]:
    return [{"speaker": f"{prefix}{i:02d}", "accent": ACCENTS[rng.integers(len(ACCENTS))],
             "variant": variants[i % len(variants)], "pitch": int(rng.integers(20, 81)),
             "rate": int(rng.integers(130, 200))} for i in range(n)]


def write_split(vs: list[dict], takes: int, sequences: int, out: Path, split: str, rng) -> tuple[list, list]:
    """Single-digit clips (takes of each digit per voice) and digit sequences joined from them."""
    (out / "digits" / "audio").mkdir(parents=True, exist_ok=True)
    (out / "sequences" / "audio").mkdir(parents=True, exist_ok=True)
    digit_rows, clips, sr = [], {}, None
    for v in vs:
        for d, word in enumerate(WORDS):
            for t in range(takes):
                wav, sr = take(word, v, rng)
                clips.setdefault((v["speaker"], d), []).append(wav)
                name = f"audio/{split}_{d}_{v['speaker']}_{t}.wav"
                sf.write(out / "digits" / name, wav, sr, subtype="PCM_16")
                digit_rows.append({"audio": name, "digit": d, "speaker": v["speaker"]})
    seq_rows = []
    for i in range(sequences):
        v = vs[rng.integers(len(vs))]
        digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 8)))]
        pieces = []
        for k, d in enumerate(digits):
            options = clips[(v["speaker"], d)]
            if k:
                pieces.append(np.zeros(int(sr * rng.uniform(0.1, 0.4)), np.float32))
            pieces.append(options[rng.integers(len(options))])
        name = f"audio/{split}_{i:05d}.wav"
        sf.write(out / "sequences" / name, np.concatenate(pieces), sr, subtype="PCM_16")
        seq_rows.append({"audio": name, "text": " ".join(map(str, digits)), "speaker": v["speaker"]})
    return digit_rows, seq_rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tts")
    p.add_argument("--train-voices", type=int, default=24)
    p.add_argument("--test-voices", type=int, default=8)
    p.add_argument("--takes", type=int, default=5, help="recordings of each digit per voice")
    p.add_argument("--train-sequences", type=int, default=2000)
    p.add_argument("--test-sequences", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    train_v = voices(args.train_voices, VARIANTS[:TRAIN_VARIANTS], rng, "train")
    test_v = voices(args.test_voices, VARIANTS[TRAIN_VARIANTS:], rng, "test")
    for split, vs, n in (("train", train_v, args.train_sequences), ("test", test_v, args.test_sequences)):
        digit_rows, seq_rows = write_split(vs, args.takes, n, out, split, rng)
        pd.DataFrame(digit_rows).to_csv(out / "digits" / f"{split}.csv", index=False)
        pd.DataFrame(seq_rows).to_csv(out / "sequences" / f"{split}.csv", index=False)
        print(f"{split}: {len(vs)} voices, {len(digit_rows)} digit clips, {len(seq_rows)} sequences")
    pd.DataFrame(train_v + test_v).to_csv(out / "voices.csv", index=False)
    print(f"wrote {out}/digits and {out}/sequences (voices in {out}/voices.csv)")


if __name__ == "__main__":
    main()
