"""What each scratch audio stem costs a training step, side by side in one run: forward and
backward of AudioEncoder on one batch, timed as the best of a few repeats after warm-up.

The batch is shaped as the plan shapes spoken digit sequences (docs/benchmarks.md): 64 clips of
up to 6.48 s at a 10 ms hop (648 frames; lengths drawn between half and all of it), 40 mel bands,
16 frames per token, d_model 64. Ratios are to the 'conv' stem, the plan's default.

    python bench/audio_stem_speed.py
    python bench/audio_stem_speed.py --frames 120 --frames-per-token 4 --batch 32
"""
from __future__ import annotations

import argparse
import time

import torch

from polyfuse.config import Config
from polyfuse.encoders.audio import AudioEncoder

STEMS = [("linear", 16), ("conv", 16), ("cnn", 8), ("cnn", 16)]


def step_seconds(encoder: torch.nn.Module, mel: torch.Tensor, mask: torch.Tensor, repeats: int) -> float:
    encoder.train()
    times = []
    for i in range(repeats + 2):                   # two warm-up steps (allocator, oneDNN kernels)
        t0 = time.perf_counter()
        encoder({"mel": mel, "mask": mask})["tokens"].sum().backward()
        times.append(time.perf_counter() - t0)
    return min(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=648)
    ap.add_argument("--mels", type=int, default=40)
    ap.add_argument("--frames-per-token", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(args.batch, args.mels, args.frames, generator=g)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), generator=g)
    mask = torch.arange(args.frames)[None] < lengths[:, None]                 # (B, F) real frames first
    mel = mel * mask[:, None]
    seconds = {}
    for stem, width in STEMS:
        torch.manual_seed(0)
        cfg = Config().merged({"model": {"d_model": args.d_model},
                               "audio": {"stem": stem, "stem_width": width, "n_mels": args.mels,
                                         "frames_per_token": args.frames_per_token,
                                         "max_seconds": args.frames * 0.01}})
        seconds[(stem, width)] = step_seconds(AudioEncoder(cfg), mel, mask, args.repeats)
    base = seconds[("conv", 16)]
    print(f"batch {args.batch} x {args.mels} mels x {args.frames} frames, {args.frames_per_token} frames per token, "
          f"d {args.d_model}, {args.threads} threads: forward + backward per batch")
    for (stem, width), s in seconds.items():
        name = f"{stem} (width {width})" if stem == "cnn" else stem
        print(f"  {name:18s} {s:7.3f} s   {s / base:5.1f}x conv")


if __name__ == "__main__":
    main()
