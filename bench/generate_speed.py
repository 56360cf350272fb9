"""Generation speed (issue 15), side by side in one run:

1. Decoding: Polyfuse's whole path (collate -> encoders -> fusion -> projector -> the decoder's
   `generate` -> text) against the same decoder's own `generate` on the same prefix embeddings,
   computed beforehand (greedy, so both write the same tokens): tokens per second, and the ratio.
2. Serving: `POST /v1/generate` over loopback, 16 concurrent closed-loop clients against one client
   at a time (requests per second, and the ratio), the server batching with --max-batch-size 16.

The run is trained here for a few epochs on synthetic scenes (coloured squares, captioned "a red
square on left"): speed does not need a good model, only a real run folder. `--decoder` takes a
causal LM folder (e.g. SmolLM2-135M built by bench/offline_towers.py); the default, `scratch`, a
small decoder trained from the captions.

    .venv/bin/python bench/generate_speed.py --out runs/bench-gen [--decoder towers/smollm2-135m]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, load, start_server  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}


def scenes(folder: Path, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour, side = rng.choice(list(COLOURS)), rng.choice(["left", "right"])
        img = np.full((32, 32, 3), 255, np.uint8)
        x0 = int(rng.integers(0, 6)) + (0 if side == "left" else 18)
        y0 = int(rng.integers(2, 18))
        img[y0:y0 + 10, x0:x0 + 10] = COLOURS[colour]
        path = folder / f"s{seed}_{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": str(path.resolve()), "caption": f"a {colour} square on the {side}"})
    return pd.DataFrame(rows)


def train(out: Path, decoder: str) -> Path:
    from polyfuse.config import Config
    from polyfuse.recipes.generate import train_generation
    run = out / "run"
    if not (run / "config.json").exists():
        cfg = Config.from_dict({
            "schema": {"image": ["image"], "label": "caption", "task": "generation"},
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 4},
            "image": {"size": 32, "patch": 8},
            "train": {"epochs": 4, "batch_size": 16, "lr": 2e-3, "val_fraction": 0.0},
            "generate": {"decoder": decoder, "max_new_tokens": 32}})
        train_generation(cfg, scenes(out / "train", 256, 0), out=run, progress=False)
    return run


@torch.no_grad()
def decoding(run: Path, rows: pd.DataFrame, batch: int, new_tokens: int, repeats: int) -> dict:
    from polyfuse.generation.run import Generator
    gen = Generator.load(run)
    g = gen.cfg.generate
    data = gen.encode(gen.read(rows))
    items = [data.inputs[i:i + batch] for i in range(0, len(data), batch)]
    prefixes = [gen.model.prefix(gen.processors.collate(b)) for b in items]
    eos, pad = gen.targets.eos_id, gen.targets.pad_id

    def own():      # the decoder's generate on prefixes computed beforehand
        return [gen.model.lm.generate(inputs_embeds=p, attention_mask=m.long(), max_new_tokens=new_tokens,
                                      do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
                for p, m in prefixes]

    def ours():     # the whole path, text out
        return [gen.generate_items(b, max_new_tokens=new_tokens) for b in items]
    tokens = sum(int(((o != pad) & (o != eos)).sum()) + int((o == eos).any(1).sum()) for o in own())
    times = {"own": [], "polyfuse": []}
    for _ in range(repeats):                 # interleaved, so machine load hits both alike
        for name, fn in (("own", own), ("polyfuse", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {"rows": len(data), "batch": batch, "tokens": tokens, "decoder": str(g.decoder),
            "own_tokens_per_s": tokens / best["own"], "polyfuse_tokens_per_s": tokens / best["polyfuse"],
            "ratio": best["own"] / best["polyfuse"]}


def serving(run: Path, rows: pd.DataFrame, requests: int) -> dict:
    bodies = [json.dumps({"image": base64.b64encode(Path(p).read_bytes()).decode()}).encode() for p in rows["image"]]
    port = free_port()
    proc = start_server(str(run), port, 16, 5.0)
    try:
        one = asyncio.run(load(port, bodies, 1, requests, 300.0, path="/v1/generate"))
        many = asyncio.run(load(port, bodies, 16, requests, 300.0, path="/v1/generate"))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"one_client_rps": one["rps"], "clients16_rps": many["rps"], "ratio": many["rps"] / one["rps"],
            "errors": one["errors"] + many["errors"], "p50_ms_16": many["p50"], "p95_ms_16": many["p95"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-gen")
    p.add_argument("--decoder", default="scratch")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--requests", type=int, default=160)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    run = train(out, args.decoder)
    test = scenes(out / "test", 64, 1)
    result = {"decoding": decoding(run, test, args.batch, args.new_tokens, args.repeats),
              "serving": serving(run, test, args.requests)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
