"""polyfuse embed: normalised vectors of every column and of the fused row, streamed to a folder."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("embed", help="embed a collection for search (streams the table; resumes where it stopped)")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", required=True,
                   help="table to embed: CSV/TSV/JSONL/Parquet, a folder of Parquet files, or WebDataset tar "
                        "shards ('shards-{000..009}.tar')")
    p.add_argument("--out", required=True, help="embedding folder (memory-mapped .npy, rows.parquet)")
    p.add_argument("--id-column", help="column holding the row ids (default: row number)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--chunk-rows", type=int, help="table rows read at a time (default 4096)")
    p.add_argument("--on-bad-row", choices=["error", "skip"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    from ..retrieval.embed import Embedder, embed_to_folder
    emb = Embedder.load(args.run)
    info = embed_to_folder(emb, args.data, args.out, batch_size=args.batch_size, on_bad_row=args.on_bad_row,
                           id_column=args.id_column, progress=not args.quiet, chunk_rows=args.chunk_rows)
    resumed = f" (resumed at row {info['resumed_at']})" if info["resumed_at"] else ""
    print(f"embedded {info['rows']} rows{resumed} as {', '.join(info['names'])} ({info['dim']}-d, "
          f"{'projection heads' if emb.heads is not None else 'pooled'}); {info['skipped']} skipped; {args.out}")
