"""polyfuse index: FAISS indexes (one per column and the fused row) over an embedding folder."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("index", help="index an embedding folder for search (reports recall@10 of approximate kinds)")
    p.add_argument("embeddings", help="folder written by `polyfuse embed`")
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"],
                   help="auto (default): flat for small collections, ivf for large; flat: exact; ivf/hnsw: approximate")
    p.add_argument("--add", action="store_true", help="add these rows to the indexes already in --out")
    p.add_argument("--nlist", type=int, help="IVF cells (default: 4 sqrt(n))")
    p.add_argument("--nprobe", type=int, help="IVF cells visited per query (default: tuned to --target-recall)")
    p.add_argument("--hnsw-m", type=int, help="HNSW links per node (default: from the dimension)")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth (default: tuned to --target-recall)")
    p.add_argument("--target-recall", type=float, help="recall@10 of exact search to tune for (default 0.95)")
    p.add_argument("--recall-queries", type=int, help="sampled queries to tune on, and as many held out to report")


def run(args):
    from ..retrieval.index import index_collection
    report = index_collection(args.embeddings, args.out, kind=args.kind, add=args.add, nlist=args.nlist,
                              nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search,
                              target_recall=args.target_recall, recall_queries=args.recall_queries)
    print(f"{'added to' if args.add else 'wrote'} {args.out}:")
    for name, r in report.items():
        print(f"  {name}: {r['count']} vectors, {r['kind']}" + describe_recall(r["recall"]))


def describe_recall(r: dict | None) -> str:
    if r is None:
        return ""
    if r["exact"]:
        return " (exact)"
    knob = r["knob"]
    how = "tuned" if r["tuned"] else "set"
    below = "" if r["recall"] >= r["target"] else f", BELOW the target {r['target']}: raise --{knob.replace('_', '-')}"
    return (f", recall@{r['k']} {r['recall']:.4f} of exact search on {r['queries']} held-out queries "
            f"({knob} {r['value']}, {how}{below})")
