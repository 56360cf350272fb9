"""polyfuse compare: one table of several runs (fusion, size, data, metrics, train time)."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("compare", help="a table of several run folders side by side")
    p.add_argument("runs", nargs="+", help="run folders (metrics from each one's metrics.json)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--csv", help="also write the table to this CSV file")


def run(args):
    from ..evaluation.compare import compare_runs, format_rows
    rows = compare_runs(args.runs)
    print(format_rows(rows, markdown=args.markdown))
    if args.csv:
        import pandas as pd
        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
