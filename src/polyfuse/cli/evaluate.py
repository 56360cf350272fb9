"""polyfuse evaluate: metrics (and modality ablation) of a run on a labelled table."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("evaluate", help="evaluate a run on a labelled table")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="labelled table")
    p.add_argument("--out", help="where to write metrics.json (default: the run folder)")
    p.add_argument("--no-ablation", action="store_true", help="skip the per-modality ablation")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--report", action="store_true", help="also write report.html next to metrics.json")
    p.add_argument("--group", help="column to slice by: per-group metrics and the largest gap between groups")


def run(args):
    from ..api import load
    from ..evaluation.evaluate import evaluate, format_table
    from ..evaluation.labelled import read_labelled
    from ..runfolder import RunFolder
    if RunFolder(args.run).kind == "generation":
        return run_generation(args)
    p = load(args.run).predictor_
    folder = RunFolder(args.run)
    ld = read_labelled(p, args.data, progress=True, extra_columns=(args.group,) if args.group else ())
    outputs = p.predict(ld.data, batch_size=args.batch_size).outputs
    result = evaluate(p, ld.data, ablation=not args.no_ablation, batch_size=args.batch_size, y=ld.y, outputs=outputs)
    result["data"] = str(args.data)
    if ld.unseen:
        result["unseen_labels"] = ld.unseen
        print(f"{len(ld.unseen)} row(s) have a label never seen in training; scored as wrong: "
              + ", ".join(f"row {u['row']} ({u['label']})" for u in ld.unseen[:10]))
    slices = None
    if args.group:
        from ..evaluation.slices import slice_metrics
        slices = result["groups"] = slice_metrics(p.labels, ld.table, ld.data.rows, ld.y, outputs, args.group)
        print(format_groups(slices))
    print(format_table(result, p.labels.task))
    out = folder.write_metrics(result, args.out)
    print(f"wrote {out}")
    if args.report:
        from ..evaluation.report import write_report
        from ..evaluation.robustness import robustness_curves
        curves = robustness_curves(p, ld.data, ld.y, result, batch_size=args.batch_size)
        result["robustness"] = curves
        folder.write_metrics(result, out)
        print(f"wrote {write_report(out.parent / 'report.html', p, Path(args.run), ld, outputs, result, curves, slices)}")


def run_generation(args):
    """A generation run: BLEU-4, ROUGE-L, CIDEr, WER, CER and exact match against the label column
    (several references per row separated by '|')."""
    from ..generation.metrics import format_metrics
    from ..generation.run import Generator, references_of
    from ..runfolder import RunFolder
    g = Generator.load(args.run)
    table = g.read(args.data)
    if g.schema.label not in table.df.columns:
        from ..errors import InputError
        raise InputError(f"the reference column '{g.schema.label}' is not in the table", table=table.name)
    data = g.encode(table, with_targets=True, progress=True)
    references = references_of(table, data.rows, g.schema.label)
    generated = g.generate(data, batch_size=min(args.batch_size, 16))
    result = {**g.score(data, generated, references), "data": str(args.data)}
    print(format_metrics(result))
    out = RunFolder(args.run).write_metrics(result, args.out)
    print(f"wrote {out}")
    if args.report:
        from ..evaluation.report.generation import write_generation_report
        report = write_generation_report(out.parent / "report.html", g, Path(args.run), table, data, generated,
                                         references, result)
        print(f"wrote {report}")


def format_groups(sl: dict) -> str:
    lines = [f"{sl['metric']} by {sl['column']}:"]
    lines += [f"  {g:<20} n={m['n']:<6} {m[sl['metric']]:.4f}" for g, m in sl["groups"].items()]
    gap = sl["largest_gap"]
    if gap:
        lines.append(f"  largest gap {gap['gap']:.4f}: {gap['best']} (best) vs {gap['worst']} (worst)")
    return "\n".join(lines)
