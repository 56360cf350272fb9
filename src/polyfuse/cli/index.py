"""polyfuse index: FAISS indexes (one per column and the fused row) over an embedding folder."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("index", help="index an embedding folder for search")
    p.add_argument("embeddings", help="folder written by `polyfuse embed`")
    p.add_argument("--out", required=True, help="index folder")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], help="flat: exact; ivf/hnsw: approximate")
    p.add_argument("--add", action="store_true", help="add these rows to the indexes already in --out")
    p.add_argument("--nlist", type=int, help="IVF cells")
    p.add_argument("--nprobe", type=int, help="IVF cells visited per query")
    p.add_argument("--hnsw-m", type=int, help="HNSW links per node")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth")


def run(args):
    from ..retrieval.index import index_collection
    counts = index_collection(args.embeddings, args.out, kind=args.kind, add=args.add, nlist=args.nlist,
                              nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
    print(f"{'added to' if args.add else 'wrote'} {args.out}: "
          + ", ".join(f"{n} ({c} vectors)" for n, c in counts.items()))
