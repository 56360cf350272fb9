"""Whisper's encoder at clip length against the 30-second padding transformers asks for.

The same tower, the same clips (speech-length, 1 s by default), side by side in one run:
transformers' WhisperEncoder on input padded to 3,000 mel frames, and Polyfuse's clip-length
path (encoders/whisper.py) with each clip followed by silence up to --min-seconds (each value in
turn; 0 = the clip alone; Polyfuse's default audio.tower_min_seconds is 5). Reports seconds per
batch, the speed ratio, and how far the clip's positions' mean-pooled features are from the
padded run's (they differ: padded positions attend over 29 s of silence).

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
    p.add_argument("--min-seconds", default="0,2,5", help="comma-separated: silence after each clip up to this length")
    args = p.parse_args(argv)
    from transformers import AutoFeatureExtractor, WhisperModel

    from polyfuse.encoders.whisper import conv_out, whisper_features
    torch.set_grad_enabled(False)
    enc = WhisperModel.from_pretrained(args.tower).get_encoder().eval()
    fe = AutoFeatureExtractor.from_pretrained(args.tower)
    rng = np.random.default_rng(0)
    n = int(16000 * args.seconds)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(args.batch)]
    padded = fe(waves, sampling_rate=16000, return_tensors="pt")["input_features"]              # (B, 80, 3000)
    k = int(conv_out(torch.tensor(n // fe.hop_length)))                                          # the clip's positions

    def clock(fn):
        fn()                                     # warm-up
        t = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        return (time.perf_counter() - t) / args.repeats, out

    t_pad, h_pad = clock(lambda: enc(padded).last_hidden_state)
    pooled_pad = h_pad[:, :k].mean(1)
    rows = {}
    for m in [float(x) for x in args.min_seconds.split(",")]:
        # As the processor does (data/pretrained.py): silence appended in the waveform, then the extractor.
        ext = [np.pad(w, (0, max(0, int(16000 * m) - n))) for w in waves]
        feats = fe(ext, sampling_rate=16000, return_tensors="pt", padding="longest")["input_features"]
        frames = torch.full((args.batch,), feats.shape[-1])
        t, (h, _) = clock(lambda: whisper_features(enc, feats, frames))
        cos = torch.nn.functional.cosine_similarity(pooled_pad, h[:, :k].mean(1)).mean()
        rows[f"min_seconds={m:g}"] = {"positions": h.shape[1], "s_per_batch": round(t, 4),
                                      "speedup_vs_padded_30s": round(t_pad / t, 1),
                                      "pooled_cosine_vs_padded": round(float(cos), 3)}
    print(json.dumps({"clip_seconds": args.seconds, "batch": args.batch, "clip_positions": k,
                      "padded_30s": {"positions": h_pad.shape[1], "s_per_batch": round(t_pad, 4)}, **rows}, indent=2))


if __name__ == "__main__":
    main()
