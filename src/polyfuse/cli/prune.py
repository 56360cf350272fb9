"""polyfuse prune: magnitude-prune a run's linear layers, optionally fine-tune, print the score before/after."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("prune", help="magnitude-prune a run's linear weights into a new run folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--amount", type=float, required=True, help="fraction of each linear layer's weights to zero")
    p.add_argument("--finetune-epochs", type=int, help="short fine-tune on --data after pruning")
    p.add_argument("--data", help="labelled table: fine-tuning data, and scored before/after")
    p.add_argument("--eval", help="labelled table to score on instead of --data")
    p.add_argument("--out", required=True, help="output run folder")


def run(args):
    from ..serving.prune import prune_run
    prune_run(args.run, args.amount, args.out, args.data, args.eval, args.finetune_epochs or 0)
