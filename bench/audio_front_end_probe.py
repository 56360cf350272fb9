"""Which scratch audio front end carries over to a voice it never heard: audio.level x audio.stem.

Each distinct avdigits recording goes through Polyfuse's own AudioProcessor (the plan's settings for
8 kHz clips: 256-point FFT, 10 ms hop, 40 mel bands) and its own AudioEncoder; the encoder's tokens,
mean-pooled over the clip, feed one linear layer. For each held-out speaker the probe trains on the
other five (15 epochs, AdamW 2e-3, batch 32; ~2,500 clips) and reports accuracy on the sixth (500
clips). No fusion, no image: a quick, comparable look at the front end alone.

    python bench/audio_front_end_probe.py                                  # levels clip, band; stem conv
    python bench/audio_front_end_probe.py --levels none clip band --stems conv cnn --seeds 0 1
    python bench/audio_front_end_probe.py --levels band --transforms none floor40 lift13 cmvn

--transforms tries changes to the features that Polyfuse does not make, around the processor's
level removal and before the training statistics: floorN keeps the raw log-mel within N dB of the
clip's loudest bin (a dynamic range, as Whisper's 80 dB), liftN then keeps the first N cepstra of
each frame (an MFCC-like smoothing that removes pitch harmonics), cmvn divides each band by its
standard deviation over the clip (variance as well as mean normalised).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import pandas as pd
import torch
from torch.nn import functional as F

from polyfuse.config import Config
from polyfuse.data.audio import AudioProcessor
from polyfuse.encoders.audio import AudioEncoder
from whisper_context_probe import clip_table          # bench/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 40, "max_seconds": 1.2,
            "frames_per_token": 4}


TRANSFORM = re.compile(r"none|cmvn|(floor|lift)(\d+)")


def transformed(proc: AudioProcessor, wave, name: str) -> torch.Tensor:
    """The processor's features for one clip, with the transform `name` (see above) around its
    level removal."""
    x = proc.log_mel(wave)
    kind, n = TRANSFORM.fullmatch(name).groups()
    if kind == "floor":                                       # the floor is set on the raw log-mel
        x = torch.maximum(x, x.max() - float(n) * math.log(10) / 10)
    x = proc.remove_level(x)
    if kind == "lift":                                        # DCT-II basis: first N cepstra, then back
        i = torch.arange(x.shape[0], dtype=x.dtype)
        basis = torch.stack([torch.cos(math.pi / x.shape[0] * (i + 0.5) * j) for j in range(int(n))])   # (N, n_mels)
        x = torch.linalg.pinv(basis) @ (basis @ x)
    if name == "cmvn":
        x = x / x.std(1, keepdim=True).clamp_min(1e-3)
    return x


class Probe(torch.nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.encoder = AudioEncoder(cfg)
        self.head = torch.nn.Linear(cfg.model.d_model, 10)

    def forward(self, mel, mask):
        out = self.encoder({"mel": mel, "mask": mask})
        m = out["mask"].float()[..., None]                         # (B, T, 1)
        return self.head((out["tokens"] * m).sum(1) / m.sum(1))    # (B, 10)


def batch(mels: list[torch.Tensor], idx: list[int], k: int):
    frames = [mels[i].shape[1] for i in idx]
    T = -(-max(frames) // k) * k
    x = torch.zeros(len(idx), mels[0].shape[0], T)
    mask = torch.zeros(len(idx), T, dtype=torch.bool)
    for j, (i, n) in enumerate(zip(idx, frames)):
        x[j, :, :n], mask[j, :n] = mels[i], True
    return x, mask


def fold(mels, digits, speakers, held_out: str, stem: str, seed: int, epochs: int, width: int) -> float:
    train = [i for i, s in enumerate(speakers) if s != held_out]
    test = [i for i, s in enumerate(speakers) if s == held_out]
    values = torch.cat([mels[i].flatten() for i in train])
    mean, std = values.mean(), values.std()                        # the training statistics, as fit() takes them
    mels = [(m - mean) / std for m in mels]
    cfg = Config().merged({"audio": {**SETTINGS, "stem": stem, "stem_width": width}})
    torch.manual_seed(seed)
    model = Probe(cfg)
    model.encoder.init_weights()
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    k = cfg.audio.frames_per_token
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        for b in range(0, len(order), 32):
            idx = [train[i] for i in order[b:b + 32]]
            loss = F.cross_entropy(model(*batch(mels, idx, k)), digits[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(*batch(mels, test[b:b + 100], k)).argmax(1) == digits[test[b:b + 100]]).sum())
                    for b in range(0, len(test), 100))
    return right / len(test)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "avdigits"))
    p.add_argument("--levels", nargs="+", default=["clip", "band"])
    p.add_argument("--stems", nargs="+", default=["conv"])
    p.add_argument("--transforms", nargs="+", default=["none"], help="none, floorN, liftN, cmvn (see above)")
    p.add_argument("--speakers", nargs="+", help="held-out speakers (default: every one)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--stem-width", type=int, default=Config().audio.stem_width, help="audio.stem_width for cnn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if bad := [t for t in args.transforms if not TRANSFORM.fullmatch(t)]:
        p.error(f"unknown transform(s) {bad}: none, floorN, liftN or cmvn")
    torch.set_num_threads(args.threads)

    root = Path(args.data)
    table = clip_table(root, per_digit=10**6)                      # every recording
    speakers = list(table.speaker)
    digits = torch.tensor(table.digit.values)
    results = []
    decoder = AudioProcessor(Config().merged({"audio": SETTINGS}).audio)
    waves = [decoder.decode(root / f) for f in table.file]          # decoded once for every level
    for level in args.levels:
        proc = AudioProcessor(Config().merged({"audio": {**SETTINGS, "level": level}}).audio)
        for name in args.transforms:
            mels = [transformed(proc, w, name) for w in waves]
            for stem in args.stems:
                for held_out in args.speakers or sorted(set(speakers)):
                    for seed in args.seeds:
                        t0 = time.time()
                        acc = fold(mels, digits, speakers, held_out, stem, seed, args.epochs, args.stem_width)
                        results.append({"level": level, "transform": name, "stem": stem, "speaker": held_out,
                                        "seed": seed, "accuracy": acc, "seconds": round(time.time() - t0, 1)})
                        print(json.dumps(results[-1]), flush=True)
    df = pd.DataFrame(results)
    table = df.pivot_table(index="speaker", columns=["level", "transform", "stem"], values="accuracy", aggfunc="mean")
    table.loc["mean"] = table.mean()
    print(table.round(3).to_string())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
