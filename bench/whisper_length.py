"""Whisper's encoder at clip length against the 30-second padding transformers asks for.

The same tower, the same clips (speech-length, 1 s by default), side by side in one run:
transformers' WhisperEncoder on input padded to 3,000 mel frames, and Polyfuse's clip-length
path (encoders/whisper.py). Reports seconds per batch, the speed ratio, and how far the two
outputs' mean-pooled features are apart (they differ: padded positions attend over silence).

    python bench/offline_towers.py --out towers            # once: the Whisper tiny.en folder
    python bench/whisper_length.py --tower towers/whisper-tiny.en
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", required=True, help="a Whisper model folder")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from transformers import AutoFeatureExtractor, WhisperModel

    from polyfuse.encoders.whisper import whisper_features
    torch.set_grad_enabled(False)
    enc = WhisperModel.from_pretrained(args.tower).get_encoder().eval()
    fe = AutoFeatureExtractor.from_pretrained(args.tower)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(16000 * args.seconds))).astype(np.float32) for _ in range(args.batch)]
    padded = fe(waves, sampling_rate=16000, return_tensors="pt")["input_features"]              # (B, 80, 3000)
    short = fe(waves, sampling_rate=16000, return_tensors="pt", padding="longest")["input_features"]
    frames = torch.full((args.batch,), short.shape[-1])

    def clock(fn):
        fn()                                     # warm-up
        t = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        return (time.perf_counter() - t) / args.repeats, out

    t_pad, h_pad = clock(lambda: enc(padded).last_hidden_state)
    t_clip, (h_clip, n) = clock(lambda: whisper_features(enc, short, frames))
    k = int(n[0])
    pooled_pad, pooled_clip = h_pad[:, :k].mean(1), h_clip[:, :k].mean(1)
    cos = torch.nn.functional.cosine_similarity(pooled_pad, pooled_clip).mean()
    print(json.dumps({"clip_seconds": args.seconds, "batch": args.batch, "positions": {"padded": h_pad.shape[1], "clip": k},
                      "s_per_batch": {"padded_30s": round(t_pad, 4), "clip_length": round(t_clip, 4)},
                      "speedup": round(t_pad / t_clip, 1),
                      "pooled_cosine_clip_vs_padded": round(float(cos), 3)}, indent=2))


if __name__ == "__main__":
    main()
