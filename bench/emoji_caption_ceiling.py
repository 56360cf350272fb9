"""How far copying a neighbour's caption can go on emoji captioning (issue 15's 1.5x target).

    python bench/emoji_caption_ceiling.py --train runs/data/emoji_train.csv --test runs/data/emoji_test.csv

Each test image's nearest training images by the frozen EfficientNet-Lite0 tower (its pooled
1,280-d features through Polyfuse's own preprocessing, cosine similarity), then test CIDEr-D
(Polyfuse's scorer, generation/metrics.py) of
  - the nearest image's caption (a nearest-neighbour baseline on frozen features), and
  - an oracle that picks, for each row, the best-scoring caption among the k nearest: what a
    decoder that reads retrieved captions (retrieval-augmented captioning, as SmallCap) could reach
    by choosing among them, short of writing names that no neighbour has.
CIDEr-D's document frequencies come from the references alone, so the per-row oracle is exact.
Shares --trunk-cache with bench/emoji_tower_ceiling.py (block 16's input for every image).

With --out DIR it also writes DIR/train.csv and DIR/test.csv with a `neighbours` column: the
captions of the --neighbours nearest training images ("; "-joined, nearest first; for a training
row, the others', never its own or a pixel-identical image's), for a decoder prompted with them:

    polyfuse train --train DIR/train.csv --task generation --label text --image image \
        --image-encoder polyfuse.zoo:efficientnet_lite0 --decoder scratch --prompt "{neighbours} =" ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emoji_tower_ceiling import trunk_activations                    # noqa: E402
from polyfuse.generation.metrics import scorer_inputs                # noqa: E402
from polyfuse.zoo import efficientnet_lite0                          # noqa: E402

START = 16          # the last block: cached activations at its input, the rest run here


def pooled(net, x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) activations at block START's input -> (N, 1280) unit vectors."""
    with torch.no_grad():
        x = x.float()
        for block in net._blocks[START:]:
            x = block(x)
        x = net._swish(net._bn1(net._conv_head(x))).mean((2, 3))
    return torch.nn.functional.normalize(x, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--trunk-cache", default="runs/emoji_trunk.pt")
    ap.add_argument("--k", default="1,2,3,5,10")
    ap.add_argument("--out", help="write train/test tables with the neighbours' captions here")
    ap.add_argument("--neighbours", type=int, default=3)
    args = ap.parse_args()
    from pycocoevalcap.cider.cider import Cider
    tr, te = pd.read_csv(args.train), pd.read_csv(args.test)
    net = efficientnet_lite0().network.net.eval()
    cache = Path(args.trunk_cache)
    acts = torch.load(cache, weights_only=True) if cache.exists() else {}
    if START in acts:
        a_tr, a_te = acts[START]
    else:
        a_tr, a_te = (trunk_activations(t.image.tolist(), net, {START})[START] for t in (tr, te))
    ks = [int(k) for k in args.k.split(",")]
    f_tr, f_te = pooled(net, a_tr), pooled(net, a_te)
    top = (f_te @ f_tr.T).topk(max(ks), dim=1).indices                 # (N_test, k)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        own = f_tr @ f_tr.T
        own[own > 0.9999] = -2.0                 # itself and pixel-identical images
        for table, idx, name in ((tr, own.topk(args.neighbours, dim=1).indices, "train"),
                                 (te, top[:, :args.neighbours], "test")):
            table.assign(neighbours=["; ".join(tr.text.iloc[int(i)] for i in row) for row in idx]).to_csv(
                out / f"{name}.csv", index=False)
    refs = [[t] for t in te.text]
    per_row = []
    for j in range(max(ks)):
        res, gts = scorer_inputs([tr.text.iloc[int(i)] for i in top[:, j]], refs)
        per_row.append(np.asarray(Cider().compute_score(gts, res)[1]))
    per_row = np.stack(per_row)                                       # (k, N_test)
    print(json.dumps({"test_rows": len(te), "nearest_caption_cider": round(float(per_row[0].mean()), 3),
                      "oracle_best_of_k_cider": {k: round(float(per_row[:k].max(0).mean()), 3) for k in ks}}))


if __name__ == "__main__":
    main()
