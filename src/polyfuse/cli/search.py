"""polyfuse search: query an index with a text, an image or a sound; or classify zero-shot against labels."""
from __future__ import annotations

import pandas as pd


def add_parser(sub):
    p = sub.add_parser("search", help="search an index with a text, image or audio query")
    p.add_argument("index", help="index folder written by `polyfuse index`")
    p.add_argument("--model", required=True, help="run folder that embedded the collection")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query text")
    q.add_argument("--image", help="query image file")
    q.add_argument("--audio", help="query audio file")
    p.add_argument("--target", help="modality, column or 'fused' to search (default: the one other "
                                    "modality in the index, else fused)")
    p.add_argument("--query-column", help="model column to read the query as (when a modality has several)")
    p.add_argument("--k", type=int, help="number of hits")
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                   help="keep rows with this value (repeatable; the same column twice means either)")
    p.add_argument("--zero-shot-labels", metavar="COLUMN",
                   help="classify the query against one text prompt per distinct value of this column")
    p.add_argument("--prompt", help="zero-shot prompt with {} for the label, e.g. 'a photo of {}'")
    p.add_argument("--columns", help="comma-separated row columns to print (default: all)")
    p.add_argument("--out", help="write the hits as .csv/.jsonl/.parquet")


def run(args):
    from ..retrieval.embed import Embedder
    from ..retrieval.index import Index, default_target
    from ..retrieval.search import parse_where, query_vector, zero_shot
    emb = Embedder.load(args.model)
    modality = "text" if args.text is not None else "image" if args.image is not None else "audio"
    q = query_vector(emb, args.text, args.image, args.audio, args.query_column)
    index = Index.load(args.index, target=args.target or default_target(args.index, modality))
    if args.zero_shot_labels:
        if args.zero_shot_labels not in index.rows.columns:
            from ..errors import PolyfuseError
            raise PolyfuseError(f"no column '{args.zero_shot_labels}' in the index rows")
        index.check(emb.model_id, q.shape[1])
        labels = sorted(index.rows[args.zero_shot_labels].dropna().unique())
        _, scores = zero_shot(emb, q, labels, args.prompt)
        out = pd.DataFrame({"label": labels, "score": scores[0]}).sort_values("score", ascending=False)
        out.insert(0, "rank", range(1, len(out) + 1))
        print(out.head(args.k or len(out)).to_string(index=False))
        return
    hits = index.search(q, args.k, parse_where(args.where), model_id=emb.model_id)
    if args.columns:
        hits = hits[["_query", "_rank", "_id", "_score", *args.columns.split(",")]]
    print(f"{index!r}")
    with pd.option_context("display.max_colwidth", 40, "display.width", 160):
        print(hits.drop(columns="_query").to_string(index=False))
    if args.out:
        from .predict import write
        write(hits, args.out)
        print(f"wrote {len(hits)} hits to {args.out}")
