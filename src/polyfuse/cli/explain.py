"""polyfuse explain: per-row attributions (attention rollout, gradient x input) as PNGs and one HTML page."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("explain", help="attribution pictures for each row of a table")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="table of rows to explain (labels not needed)")
    p.add_argument("--out", required=True, help="output folder (PNG files, attributions.json, index.html)")


def run(args):
    from ..api import load
    from ..evaluation.explain_render import explain_table
    p = load(args.run, device="cpu").predictor_
    data = p.encode(p.read(args.data))
    out = Path(args.out)
    results = explain_table(p, data, out)
    for r in results:
        share = ", ".join(f"{m} {v:.0%}" for m, v in r["share"]["grad_x_input"].items())
        print(f"row {r['row']}: {r['prediction']}  ({share})")
    print(f"wrote {len(results)} row(s) to {out / 'index.html'}")
