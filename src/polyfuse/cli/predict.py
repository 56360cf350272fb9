"""polyfuse predict: the input rows plus prediction and per-class probabilities."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("predict", help="predict for a table")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True, help="table to predict for")
    p.add_argument("--out", required=True, help="output table (.csv, .jsonl or .parquet)")
    p.add_argument("--batch-size", type=int, default=64)


def run(args):
    from ..api import load
    from ..runfolder import RunFolder
    if RunFolder(args.run).kind == "generation":
        return run_generation(args)
    p = load(args.run).predictor_
    table = p.read(args.data)
    data = p.encode(table, progress=True)
    df = table.df.iloc[data.rows].copy()
    for name, values in p.predict(data, batch_size=args.batch_size).columns().items():
        df[name] = values
    write(df, args.out)
    print(f"wrote {len(df)} predictions to {args.out}")


def run_generation(args):
    """A generation run: the input rows plus a `generated` column."""
    from ..generation.run import Generator
    g = Generator.load(args.run)
    table = g.read(args.data)
    data = g.encode(table, progress=True)
    df = table.df.iloc[data.rows].copy()
    df["generated"] = g.generate(data, batch_size=min(args.batch_size, 16))
    write(df, args.out)
    print(f"wrote {len(df)} generations to {args.out}")


def write(df, path: str):
    if path.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif path.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False)
