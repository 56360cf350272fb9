"""Approximate search as `polyfuse index` builds it vs exact search, side by side at one size.

    nice -n 19 .venv/bin/python bench/ann.py --vectors 1000000 --dim 128 --threads 1

The collection is bench/search.py's clustered Gaussian mixture (normalised; embeddings have far fewer
effective dimensions than their width, so isotropic noise would make any index meaningless). The
approximate index is made exactly as `polyfuse index` makes it: settings planned from the collection
(`--kind auto`: IVF with 4 sqrt(n) cells at this size) and the search knob tuned on vectors sampled
from the collection (Index.tune, which also reports recall on a held-out half). Then both indexes
answer the same batch of fresh queries (new draws from the mixture, not in the collection):
queries per second (wall and CPU) and recall@10 of the approximate top-10 against the exact one.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from polyfuse.retrieval.index import Index
from search import mixture, parse_common, recall, say, timed_search  # noqa: E402  (bench/ is the script's folder)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=200, help="fresh queries timed on both indexes")
    p.add_argument("--kind", choices=["auto", "ivf", "hnsw"], default="auto")
    args, rng = parse_common(p, argv)
    t = time.perf_counter()
    both = mixture(args.vectors + args.queries, args.dim, args.clusters, rng, args.spread)
    x, q = both[:args.vectors], np.ascontiguousarray(both[args.vectors:])
    say(f"data: {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    flat = Index.build(x, kind="flat")
    flat_build = time.perf_counter() - t
    exact, flat_qps, flat_cpu = timed_search(flat, q, 10, args.repeats)
    say(f"flat: {flat_qps:.1f} queries/s")
    del flat                                # one index in memory at a time

    t = time.perf_counter()
    approx = Index(args.dim, kind=args.kind, target_recall=args.target_recall).add(x)
    build = time.perf_counter() - t
    t = time.perf_counter()
    tuned = approx.tune(x)
    tune_s = time.perf_counter() - t
    pos, qps, cpu = timed_search(approx, q, 10, args.repeats)
    got = recall(pos, exact)
    m = approx.meta
    setting = {"ivf": f"nlist={m['nlist']}, nprobe={m['nprobe']}", "flat": "exact",
               "hnsw": f"M={m['hnsw_m']}, efSearch={m['ef_search']}"}[m["kind"]]
    out = {"vectors": args.vectors, "dim": args.dim, "kind": m["kind"], "setting": setting,
           "flat_build_s": round(flat_build, 1), "build_s": round(build, 1), "tune_s": round(tune_s, 1),
           "flat_qps": round(flat_qps, 1), "qps": round(qps, 1), "speedup": round(qps / flat_qps, 1),
           "flat_cpu_qps": round(flat_cpu, 1), "cpu_qps": round(cpu, 1), "cpu_speedup": round(cpu / flat_cpu, 1),
           "recall@10": round(got, 4), "heldout_recall@10": tuned["recall"],
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    print("| vectors | dim | index | setting (chosen) | build s | tune s | exact q/s | approx q/s | x | "
          "exact q/CPU-s | approx q/CPU-s | x | recall@10 (fresh) | recall@10 (held-out, reported) | peak RSS GB |")
    print("| " + " | ".join(["---"] * 15) + " |")
    print(f"| {out['vectors']:,} | {out['dim']} | {out['kind']} | {setting} | {out['build_s']} | {out['tune_s']} | "
          f"{out['flat_qps']:,} | {out['qps']:,} | {out['speedup']} | {out['flat_cpu_qps']:,} | {out['cpu_qps']:,} | "
          f"{out['cpu_speedup']} | {out['recall@10']} | {out['heldout_recall@10']} | {out['peak_rss_gb']} |")
    ok = out["speedup"] >= 10 and out["recall@10"] >= args.target_recall
    print(f"target (>= 10x exact's queries/s at recall@10 >= {args.target_recall}): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
