"""polyfuse pretrain: self-supervised pretraining on an unlabeled table (objectives/), for --init-from."""
from __future__ import annotations

import argparse


def add_parser(sub):
    from ..planning import PRESETS
    from .train import add_schema_args, add_training_args
    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabeled rows")
    p.add_argument("--data", required=True, help="table of unlabeled rows (.csv/.tsv/.jsonl/.parquet)")
    p.add_argument("--val", help="held-out table: every objective's loss on it is logged after each epoch")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    add_schema_args(p)
    p.add_argument("--objectives", help="comma-separated: contrastive,itm,mlm,masked_patch "
                   "(default: every one the columns allow)")
    p.add_argument("--weights", help="loss weights, e.g. mlm=1,itm=0.5 (others weigh 1)")
    p.add_argument("--mlm-prob", type=float, help="share of text tokens hidden (default: pretrain.mlm_prob)")
    p.add_argument("--mask-ratio", type=float, help="share of image patches / audio tokens hidden (default: pretrain.mask_ratio)")
    p.add_argument("--lock-towers", nargs="?", const="", default=None, metavar="COLUMNS",
                   help="contrastive: a column read by a frozen pretrained tower is embedded by the tower "
                        "itself (mean of its outputs, no trained projection); the others learn to match it "
                        "(LiT). Optionally the columns to lock, comma-separated (default: every frozen one)")
    p.add_argument("--match-column", help="a column whose equal values mark rows that match each other "
                   "(many-to-many pairings, e.g. the digit of avdigits): such rows are never each other's "
                   "contrastive or ITM negatives")
    p.add_argument("--no-hard-negatives", action="store_true",
                   help="ITM negatives drawn uniformly instead of by contrastive similarity")
    add_training_args(p)
    p.add_argument("--preset", choices=list(PRESETS), help="budget, model size and augmentation together")
    p.add_argument("--augment", action="store_true", default=None, help="augment rows (config section augment)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def train_style_args(args) -> argparse.Namespace:
    """`train`'s flags with this command's values, so train.config_from_args builds the config."""
    from . import train
    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers(dest="command"))
    base = parser.parse_args(["train", "--train", args.data, "--out", args.out])
    for key, value in vars(args).items():
        if key in vars(base):
            setattr(base, key, value)
    return base


def pretrain_overrides(args) -> dict:
    """Only the values given on the command line; the rest are PretrainConfig's defaults."""
    from ..objectives import parse_weights
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()] if args.objectives else None
    return {"objectives": objectives, "weights": parse_weights(args.weights) or None, "mlm_prob": args.mlm_prob,
            "mask_ratio": args.mask_ratio, "match_column": args.match_column, **lock_overrides(args.lock_towers),
            "hard_negatives": False if args.no_hard_negatives else None}


def lock_overrides(value: str | None) -> dict:
    """--lock-towers (every frozen column), --lock-towers a,b (those columns), absent (no change)."""
    if value is None:
        return {}
    columns = [c.strip() for c in value.split(",") if c.strip()]
    return {"lock_towers": True, "lock_columns": columns or None}


def run(args):
    from ..recipes.pretrain import pretrain_run
    from .train import config_from_args
    cfg, fixed = config_from_args(train_style_args(args))
    cfg = cfg.merged({"pretrain": pretrain_overrides(args)})
    summary = pretrain_run(cfg, args.data, args.out, progress=not args.quiet, val=args.val, resume=args.resume,
                           fixed=fixed, preset=args.preset)
    stop = summary.get("stopped") or "all epochs"
    print(f"pretrained {summary['epoch']} epoch(s) ({stop}) on {summary['rows']} rows; run folder {args.out}")
