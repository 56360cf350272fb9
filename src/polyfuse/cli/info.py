"""polyfuse info: what a run folder holds."""
from __future__ import annotations

import json

from ..runfolder import RunFolder


def add_parser(sub):
    p = sub.add_parser("info", help="schema, sizes and parameter count of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    from ..api import load
    p = load(args.run).predictor_
    folder = RunFolder(args.run)
    n_params = sum(t.numel() for t in p.model.parameters())
    per_part = {name: sum(t.numel() for t in mod.parameters()) for name, mod in
                [*((f"encoder.{m}", e) for m, e in p.model.encoders.items()), ("fusion", p.model.fusion),
                 ("head", p.model.head)]}
    m = p.cfg.model
    info = {
        "run": str(folder.path), "schema": folder.schema(),
        "model": {"fusion": m.fusion, "size": m.size, "d_model": m.d_model, "n_layers": m.n_layers,
                  "n_heads": m.n_heads}, "parameters": n_params, "parameters_by_part": per_part,
        "classes": p.labels.classes, "vocab_size": p.processors.text.vocab_size if p.processors.text else None,
        "weights_bytes": folder.weights_bytes(),
    }
    if log := folder.log():
        info["epochs_trained"] = len(log)
    if metrics := folder.metrics():
        info["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        print(f"{key:>18}: {value}")
