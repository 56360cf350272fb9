"""polyfuse export: the run's model as ONNX (optionally int8), checked against eager PyTorch."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("export", help="export a run's model to ONNX (optionally int8-quantized)")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", choices=["onnx"], required=True)
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (dynamic int8 linear layers)")
    p.add_argument("--out", required=True, help="output folder (servable with `polyfuse serve`)")


def run(args):
    from ..serving.export import export_onnx
    report = export_onnx(args.run, args.out, args.quantize)
    print(f"wrote {', '.join(report['files'])} to {args.out} (export took {report['export_seconds']} s)")
