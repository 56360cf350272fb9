"""Approximate vs exact search at scale: queries per second and recall@10 of IVF and HNSW against flat.

    nice -n 10 .venv/bin/python bench/search.py --sizes 10000 100000 1000000 --dim 128

Vectors are random but clustered (a Gaussian mixture, normalised), like embeddings, which have far
fewer effective dimensions than their width; `--data uniform` gives isotropic noise, the worst case
for any index. Queries are fresh draws from the same mixture. Every index answers the same batch of
queries at once (FAISS uses all cores); recall@10 = |approx top-10 & exact top-10| / 10. For each
approximate kind the cheapest search setting (nprobe / efSearch) is swept upward and the first one
reaching --target-recall is reported as the operating point.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np

from polyfuse.retrieval.index import Index


def mixture(n: int, dim: int, n_clusters: int, rng, spread: float, chunk: int = 100_000) -> np.ndarray:
    """n normalised points around n_clusters unit centres; made in chunks to keep memory at n * dim * 4."""
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        x = centres[rng.integers(n_clusters, size=b - a)] + rng.normal(0, spread, size=(b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def uniform(n: int, dim: int, rng) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_search(index: Index, q: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float, float]:
    """(positions, queries per wall second, queries per CPU second). On a shared machine wall time
    mostly measures the neighbours; CPU time is what the search costs on an idle core."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        _, pos = index.search_ids(q, k)
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return pos, len(q) / best, len(q) / max(best_cpu, 1e-9)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


SWEEPS = {"ivf": ("nprobe", (4, 8, 16, 32, 64, 128)), "hnsw": ("ef_search", (16, 32, 64, 128, 256, 512, 1024))}


def bench_size(n: int, args, rng) -> list[dict]:
    t = time.perf_counter()
    if args.data == "uniform":
        x, q = uniform(n, args.dim, rng), uniform(args.queries, args.dim, rng)
    else:
        both = mixture(n + args.queries, args.dim, args.clusters, rng, args.spread)
        x, q = both[:n], np.ascontiguousarray(both[n:])
        del both
    say(f"n={n}: data {time.perf_counter() - t:.1f}s")
    rows = []
    t = time.perf_counter()
    flat = Index.build(x, kind="flat")
    exact, exact_qps, exact_cpu = timed_search(flat, q, 10, args.repeats)
    rows.append({"n": n, "kind": "flat", "setting": "-", "build_s": round(time.perf_counter() - t, 2),
                 "qps": round(exact_qps, 1), "cpu_qps": round(exact_cpu, 1), "recall@10": 1.0, "speedup": 1.0,
                 "cpu_speedup": 1.0})
    say(f"  flat: {exact_qps:.0f} qps")
    del flat
    for kind in args.kinds:
        t = time.perf_counter()
        params = {"nlist": args.nlist or int(np.sqrt(n))} if kind == "ivf" else {"hnsw_m": args.hnsw_m}
        index = Index.build(x, kind=kind, **params)
        build = time.perf_counter() - t
        name, values = SWEEPS[kind]
        for v in values:
            index.set_search(**{name: v})
            pos, qps, cpu = timed_search(index, q, 10, args.repeats)
            r = recall(pos, exact)
            row = {"n": n, "kind": kind, "setting": f"{name}={v}" + (f",nlist={params['nlist']}" if kind == "ivf" else
                                                                        f",M={params['hnsw_m']}"),
                   "build_s": round(build, 2), "qps": round(qps, 1), "cpu_qps": round(cpu, 1),
                   "recall@10": round(r, 4), "speedup": round(qps / exact_qps, 1),
                   "cpu_speedup": round(cpu / exact_cpu, 1)}
            rows.append(row)
            say(f"  {kind} {row['setting']}: recall@10 {r:.4f}, {qps:.0f} qps ({row['speedup']}x), build {build:.1f}s")
            if r >= args.target_recall:
                break
        del index
    return rows


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_common(p: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, np.random.Generator]:
    """The mixture, timing and output flags bench/search.py and bench/ann.py share; sets FAISS's threads."""
    p.add_argument("--clusters", type=int, default=200, help="mixture components (not tied to IVF's cells)")
    p.add_argument("--spread", type=float, default=0.08, help="per-dimension noise around a cluster centre")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per setting (best is kept)")
    p.add_argument("--threads", type=int, help="FAISS threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    return args, np.random.default_rng(args.seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"])
    p.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    p.add_argument("--nlist", type=int, help="IVF cells (default sqrt(n))")
    p.add_argument("--hnsw-m", type=int, default=32)
    args, rng = parse_common(p, argv)
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args, rng)
    print("| n | index | setting | build s | queries/s (wall) | x exact | queries/CPU-s | x exact | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']:,} | {r['kind']} | {r['setting']} | {r['build_s']} | {r['qps']:,} | {r['speedup']} | "
              f"{r['cpu_qps']:,} | {r['cpu_speedup']} | {r['recall@10']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
