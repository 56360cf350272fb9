"""polyfuse evaluate-retrieval: R@1/5/10, median rank and mAP, both directions, exact vs approximate."""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("evaluate-retrieval", help="retrieval metrics of a run on a table")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="table whose rows pair the query and target items")
    p.add_argument("--query", required=True, help="query modality or column")
    p.add_argument("--target", required=True, help="target modality, column or 'fused'")
    p.add_argument("--match", action="append", default=[], metavar="COLUMN",
                   help="a target is also correct when it equals the query on this column (repeatable)")
    p.add_argument("--approx", action="append", choices=["ivf", "hnsw"],
                   help="approximate index kind(s) to compare with exact search (default: hnsw)")
    p.add_argument("--by", metavar="COLUMN",
                   help="also report exact-search metrics per value of this table column (e.g. group), "
                        "each slice's queries ranked against all targets")
    p.add_argument("--one-way", action="store_true", help="only query -> target")
    p.add_argument("--zero-shot", metavar="COLUMN",
                   help="also classify the non-text side zero-shot against one text prompt per value of this "
                        "table column (e.g. group): accuracy, top-3, balanced accuracy")
    p.add_argument("--prompt", help="zero-shot prompt with {} for the label, e.g. 'an emoji of {}'")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="write the metrics as JSON here")


def run(args):
    from ..retrieval.embed import Embedder
    from ..retrieval.metrics import evaluate_retrieval, format_table
    emb = Embedder.load(args.run)
    kinds = ("flat", *(args.approx or ["hnsw"]))
    results = evaluate_retrieval(emb, args.data, args.query, args.target, match=args.match, kinds=kinds,
                                 both=not args.one_way, batch_size=args.batch_size, progress=True, by=args.by)
    print(format_table(results))
    report = {"run": args.run, "data": args.data, "match": args.match, "by": args.by, "results": results}
    if args.zero_shot:
        from ..retrieval.metrics import zero_shot_metrics
        side = next((c for c in (args.target, args.query) if emb.names[emb.column_for(c)] != "text"), args.target)
        zs = zero_shot_metrics(emb, args.data, side, args.zero_shot, args.prompt, args.batch_size, progress=True)
        print(f"zero-shot {zs['column']} -> {zs['labels_from']} ({zs['classes']} classes, {zs['rows']} rows, "
              f"prompt {zs['prompt']!r}): accuracy {zs['accuracy']:.4f}, top-3 {zs['top3_accuracy']:.4f}, "
              f"balanced {zs['balanced_accuracy']:.4f} (majority class {zs['majority_rate']:.4f})")
        report["zero_shot"] = zs
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
