"""polyfuse train: fit a model on a labelled table and write a run folder."""
from __future__ import annotations

import argparse

import yaml

from ..config import Config, read_config_file, set_keys
from ..errors import ConfigError
from ..planning import PRESETS


def add_parser(sub, name: str = "train", help: str = "train a model on a labelled table", out_required: bool = True):
    p = sub.add_parser(name, help=help)
    p.add_argument("--train", required=True, help="training table (.csv/.tsv/.jsonl/.parquet)")
    p.add_argument("--val", help="validation table (early stopping, metrics.json)")
    p.add_argument("--label", help="label column")
    add_schema_args(p)
    p.add_argument("--task", choices=["classification", "multilabel", "regression", "generation"],
                   help="generation: the label column is text to write, with --decoder")
    p.add_argument("--decoder", metavar="FOLDER", help="--task generation: a Hugging Face causal language model "
                   "folder (or 'scratch': a small one trained from the targets); the fused tokens become its prefix "
                   "(generate.decoder)")
    p.add_argument("--prompt", metavar="TEMPLATE", help="--task generation: text the decoder reads after the prefix, "
                   "{column} filled from each row, e.g. 'Question: {question} Answer:' (generate.prompt)")
    add_training_args(p, out_required)
    p.add_argument("--patience", type=int)
    p.add_argument("--modality-dropout", type=float)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--init-from", metavar="RUN", help="start from this run's preprocessing, encoders and "
                   "fusion (say from polyfuse pretrain), with a fresh head")
    p.add_argument("--allow-partial", action="store_true", help="with --init-from: load only the weights "
                   "that match and print those skipped")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="training-time augmentation (config section augment; the plan turns it on "
                        "except with --preset fast)")
    add_plan_args(p)


def add_plan_args(p):
    """What the plan takes besides the table: a preset, and how validation rows are held out."""
    p.add_argument("--preset", choices=list(PRESETS), help="budget, model size and augmentation together: "
                   + "; ".join(f"{k}: {v['minutes']} min" for k, v in PRESETS.items())
                   + " (--max-minutes overrides the preset's)")
    p.add_argument("--group-by", metavar="COLUMN", help="without --val: hold out whole groups of this column "
                   "(speaker, patient, source) for validation; 'auto': a column that looks like one; "
                   "'none' (default): rows")
    p.add_argument("--val-fraction", type=float, help="without --val: share of rows held out (train.val_fraction)")


def add_tower_args(p):
    g = p.add_argument_group("pretrained encoders")
    for m in ("text", "image", "audio"):
        g.add_argument(f"--{m}-encoder", metavar="PATH_OR_HUB_ID",
                       help=f"{m} encoder: a Hugging Face model folder or hub id"
                            + (", 'word2vec', or 'scratch'" if m == "text" else
                               ", module:factory (any PyTorch network, e.g. polyfuse.zoo:efficientnet_lite0), "
                               "or 'scratch'" if m == "image" else ", or 'scratch'"))
    g.add_argument("--freeze-encoders", action="store_true", default=None, help="keep pretrained towers fixed")
    g.add_argument("--unfreeze-top", type=int, metavar="K", help="train the top K layers of frozen towers")
    g.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters on frozen towers; with --task generation: "
                   "on the decoder, after a first stage that trains the projector alone")
    g.add_argument("--feature-cache-dir", help="where frozen towers' outputs are cached")


def add_training_args(p, out_required: bool = True):
    """The flags `train` and `pretrain` share: config, size, budget, run folder."""
    p.add_argument("--config", help="YAML/JSON config file; flags override it")
    p.add_argument("--size", help="named model size (tiny, small, base)")
    p.add_argument("--fusion", choices=["attention", "concat", "late"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    p.add_argument("--on-bad-row", choices=["error", "skip"])
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every STEPS steps "
                   "inside an epoch, so --resume continues mid-epoch (train.checkpoint_every)")
    add_data_args(p)
    add_tower_args(p)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. --set image.stem=conv (repeatable)")
    p.add_argument("--out", required=out_required, help="run folder")


def add_data_args(p):
    """How rows are decoded and cached (config section data, docs/data.md)."""
    g = p.add_argument_group("data loading")
    g.add_argument("--workers", type=int, metavar="N", help="DataLoader worker processes that decode batches "
                   "(data.workers; default min(4, CPUs - 1), 0 for tables under 1,000 rows)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="keep decoded inputs in the on-disk decode cache (data.cache, on by default); "
                        "--no-cache decodes every row again each epoch")
    g.add_argument("--cache-dir", metavar="DIR", help="where the decode cache lives (data.cache_dir)")


def data_overrides(args) -> dict:
    return {"workers": args.workers, "cache": args.cache, "cache_dir": args.cache_dir}


def add_schema_args(p):
    p.add_argument("--text", action="append", help="text column (repeatable)")
    p.add_argument("--image", action="append", help="image path column (repeatable)")
    p.add_argument("--audio", action="append", help="audio path column (repeatable)")


def config_from_args(args) -> tuple[Config, set[str]]:
    """The config the flags ask for, and the keys the user set (config file, flags, --set): the
    plan chooses every other one from the data."""
    written = read_config_file(args.config) if args.config else {}
    cfg = Config.from_dict(written) if args.config else Config()
    if args.init_from and not args.config:   # the earlier run's architecture
        from ..recipes.transfer import base_config
        cfg = base_config(args.init_from)
    # A generation run's --lora adapts its decoder (LLaVA's second stage), not its towers.
    gen_lora = bool(args.lora) and args.task == "generation"
    overrides = {
        "schema": {"label": args.label, "text": args.text, "image": args.image, "audio": args.audio,
                   "task": args.task},
        "model": {"size": args.size, "fusion": args.fusion, "modality_dropout": args.modality_dropout,
                  "freeze_encoders": True if args.unfreeze_top else args.freeze_encoders,
                  "unfreeze_top_k": args.unfreeze_top, "lora": None if gen_lora else args.lora,
                  "feature_cache_dir": args.feature_cache_dir},
        "text": {"encoder": args.text_encoder}, "image": {"encoder": args.image_encoder},
        "audio": {"encoder": args.audio_encoder},
        "augment": {"enabled": args.augment},
        "data": data_overrides(args),
        "generate": {"decoder": args.decoder, "prompt": args.prompt, "decoder_train": "lora" if gen_lora else None},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                  "patience": args.patience, "max_minutes": args.max_minutes, "bf16": args.bf16,
                  "on_bad_row": args.on_bad_row, "group_by": args.group_by, "val_fraction": args.val_fraction,
                  "checkpoint_every": args.checkpoint_every},
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return cfg.merged(overrides), set_keys(written, overrides)


def run(args):
    from ..recipes.train import train_run
    cfg, fixed = config_from_args(args)
    if cfg.schema.task == "generation":
        return run_generation(args, cfg, fixed)
    _, summary = train_run(cfg, args.train, args.val, args.out, resume=args.resume, progress=not args.quiet,
                           init_from=args.init_from, allow_partial=args.allow_partial, fixed=fixed,
                           preset=args.preset)
    if not summary["is_main_process"]:      # under torchrun, one report is enough
        return
    stop = summary.get("stopped") or "all epochs"
    print(f"trained {summary['epoch']} epoch(s) ({stop}); best epoch {summary.get('best_epoch')}; run folder {args.out}")
    if "val_metrics" in summary:
        from ..evaluation.evaluate import format_table
        print(format_table(summary["val_metrics"], summary.get("task") or _task(args.out)))


def run_generation(args, cfg, fixed):
    from ..generation.metrics import format_metrics
    from ..recipes.generate import train_generation
    _, summary = train_generation(cfg, args.train, args.val, args.out, resume=args.resume,
                                  progress=not args.quiet, fixed=fixed, preset=args.preset)
    if not summary["is_main_process"]:
        return
    print(f"trained {summary['epoch']} epoch(s) ({summary.get('stopped') or 'all epochs'}); best epoch "
          f"{summary.get('best_epoch')}; run folder {args.out}")
    if "val_metrics" in summary:
        m = summary["val_metrics"]
        print(format_metrics(m, m.get("nearest_neighbour")))


def _task(out):
    from ..runfolder import RunFolder
    return RunFolder(out).schema()["task"]
