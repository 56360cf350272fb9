"""polyfuse evaluate: metrics (and modality ablation) of a run on a labelled table."""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("evaluate", help="evaluate a run on a labelled table")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="labelled table")
    p.add_argument("--out", help="where to write metrics.json (default: the run folder)")
    p.add_argument("--no-ablation", action="store_true", help="skip the per-modality ablation")
    p.add_argument("--batch-size", type=int, default=64)


def run(args):
    from ..api import load
    from ..evaluation.evaluate import evaluate, format_table
    from ..training.checkpoint import atomic_write_text
    p = load(args.run).predictor_
    table = p.read(args.data)
    if p.schema.label not in table.df.columns:
        from ..errors import InputError
        raise InputError(f"label column '{p.schema.label}' is not in the table", table=table.name,
                         column=p.schema.label)
    data = p.encode(table, with_labels=True, progress=True)
    result = evaluate(p, data, ablation=not args.no_ablation, batch_size=args.batch_size)
    result["data"] = str(args.data)
    print(format_table(result, p.labels.task))
    out = Path(args.out) if args.out else Path(args.run) / "metrics.json"
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "metrics.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
