"""polyfuse plan: print the settings `polyfuse train` would choose from the data, without training."""
from __future__ import annotations


def add_parser(sub):
    from . import train
    train.add_parser(sub, "plan", help="print the settings training would choose from the data (no training)",
                     out_required=False)


def run(args):
    from ..planning.run import preview
    from .train import config_from_args
    cfg, fixed = config_from_args(args)
    print(preview(cfg, args.train, args.val, fixed, args.preset, args.init_from))
