"""Score a pretraining run on a table it never saw: each objective's loss, held-out retrieval (MRR)
and, with ITM, the matching AUC (each row against itself with one cell from a random other row;
0.5 is chance) -- the numbers `polyfuse pretrain` logs for its validation rows, on any table.

    .venv/bin/python bench/pretrain_heldout.py runs/emoji_itm --data runs/data/emoji_test.csv
"""
from __future__ import annotations

import argparse
import json

import torch

from polyfuse.data.dataset import encode_table, make_collate
from polyfuse.data.manifest import read_table
from polyfuse.inference import load_pretrainer
from polyfuse.recipes.pretrain import match_groups, validation_losses, with_groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg, processors, pre = load_pretrainer(args.run)
    table = read_table(args.data)
    rows = encode_table(table, processors, None, progress=False)
    groups = match_groups(table, rows, cfg.pretrain.match_column)
    with torch.no_grad():
        out = validation_losses(pre, rows, with_groups(make_collate(processors), groups), args.batch_size,
                                "cpu", args.seed)
    out.pop("score")
    print(json.dumps({k.replace("val_", "test_"): round(v, 4) for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
