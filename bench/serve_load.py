"""Closed-loop HTTP load on `polyfuse serve` over loopback: dynamic batching vs --max-batch-size 1,
against the offline batched throughput of the same model measured in the same run.

N clients each send a request, wait for the answer, and send the next (closed loop), until
--requests in all or --seconds have passed. Every request is one avdigits test row (image and
audio as base64 JSON). Clients speak minimal HTTP/1.1 keep-alive over asyncio streams, so the
load generator costs little CPU next to the server on a small machine. Offline throughput is the
same decode + collate + model path, in batches of --max-batch-size, without HTTP.

    python bench/serve_load.py runs/bench-serving/run --clients 32 --requests 2000 --seconds 40 [--workers 2]

Run it without `nice`: with the kernel's autogroup scheduling (sched_autogroup_enabled=1) `nice` only ranks
processes within one session, so a niced job in another session still takes its equal share of the cores.

The server and the offline measurement both use one intra-op thread: on a machine shared with
other jobs, two OpenMP threads fighting for cores made every call many times slower.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"         # loopback only


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (eager) or exported folder (ONNX)")
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "datasets" / "avdigits"))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=3000, help="requests per configuration, at most")
    p.add_argument("--seconds", type=float, default=40.0, help="time per configuration, at most")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--rows", type=int, default=256, help="distinct test rows to cycle through")
    p.add_argument("--workers", type=int, default=1, help="server processes (polyfuse serve --workers), both configurations")
    p.add_argument("--untrained-size", choices=["tiny", "small", "base"],
                   help="serve a randomly initialised model of this size with the run's preprocessing instead "
                        "(throughput does not depend on the weights)")
    return p.parse_args(argv)


def untrained_copy(run: str, size: str) -> str:
    """The run's config, processors and labels with a fresh model of another size, saved beside it."""
    from polyfuse.inference import Predictor
    from polyfuse.model import PolyfuseModel
    from polyfuse.runfolder import RunFolder
    out = Path(run).parent / f"untrained-{size}"
    if not RunFolder(out).is_finished():
        p = Predictor.load(run)
        cfg = p.cfg.merged({"model": {"size": size}})
        vocab = p.processors.text.vocab_size if p.processors.text else None
        Predictor(cfg, p.processors, p.labels, PolyfuseModel(cfg, cfg.schema, p.labels.n_outputs, vocab)).save(out)
    return str(out)


def bodies(data: Path, n: int) -> list[bytes]:
    df = pd.read_csv(data / "test.csv").head(n)
    return [json.dumps({c: base64.b64encode((data / r[c]).read_bytes()).decode() for c in ("image", "audio")}).encode()
            for _, r in df.iterrows()]


def offline_rows_per_s(run: str, payloads: list[bytes], batch: int, total: int) -> float:
    """The server's work minus HTTP: parse, decode, collate and run the model in full batches."""
    import torch
    torch.set_num_threads(1)          # as the server runs (--threads 1)
    from polyfuse.serving.backend import load_backend
    from polyfuse.serving.protocol import decode_rows, parse_json
    from polyfuse.serving.settings import ServeConfig
    backend, limits = load_backend(run, threads=1), ServeConfig()      # ONNX Runtime too, as served
    backend.run(decode_rows(parse_json(payloads[0], backend, limits), backend, limits))   # warm-up
    t, c, done = time.perf_counter(), time.process_time(), 0
    while done < total:
        chunk = [payloads[(done + i) % len(payloads)] for i in range(batch)]
        rows = [decode_rows(parse_json(b, backend, limits), backend, limits)[0] for b in chunk]
        backend.run(rows)
        done += batch
    return done / (time.perf_counter() - t), done / (time.process_time() - c)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time so far of a process and all its live descendants (--workers), from Linux /proc."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)], ticks[int(entry)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, max_batch: int, max_wait: float, workers: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "polyfuse.cli", "serve", run, "--host", HOST, "--port", str(port),
           "--max-batch-size", str(max_batch), "--max-wait-ms", str(max_wait), "--max-rows", "1",
           "--log-level", "warning", "--threads", "1", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                if b" 200 " in s.recv(1024):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready in 120 s")


async def request(reader, writer, raw: bytes) -> int:
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def load(port: int, payloads: list[bytes], clients: int, total: int, seconds: float,
               path: str = "/v1/predict") -> dict:
    raws = [(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in payloads]
    latencies, errors, sent = [], 0, 0
    stop = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(HOST, port)
        while sent < total and time.perf_counter() < stop:
            raw = raws[(sent * 7 + k) % len(raws)]
            sent += 1
            t = time.perf_counter()
            status = await request(reader, writer, raw)
            latencies.append(time.perf_counter() - t)
            errors += status != 200
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "errors": errors, "seconds": wall, "rps": len(latencies) / wall,
            "p50": statistics.median(latencies) * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000}


def mean_batch(port: int) -> float:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    vals = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
            if line.startswith("polyfuse_batch_size_sum") or line.startswith("polyfuse_batch_size_count")}
    return vals["polyfuse_batch_size_sum"] / max(1.0, vals["polyfuse_batch_size_count"])


def main(argv=None):
    args = parse_args(argv)
    if args.untrained_size:
        args.run = untrained_copy(args.run, args.untrained_size)
    payloads = bodies(Path(args.data), args.rows)
    load_before = os.getloadavg()
    results = {}
    for name, mbs, wait in (("dynamic batching", args.max_batch_size, args.max_wait_ms), ("max_batch_size 1", 1, 0.0)):
        port = free_port()
        proc = start_server(args.run, port, mbs, wait, args.workers)
        try:
            c, client = cpu_seconds(proc.pid), time.process_time()
            r = asyncio.run(load(port, payloads, args.clients, args.requests, args.seconds))
            r["cpu_s"] = cpu_seconds(proc.pid) - c
            r["client_cpu_s"] = time.process_time() - client       # the load generator's own CPU
            r["per_cpu_s"] = r["requests"] / r["cpu_s"]
            r["mean_batch"] = mean_batch(port)      # of one worker when --workers > 1
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        results[name] = r
        print(f"{name}: {r}", flush=True)
    n_off = min(args.requests, 2048)
    offline, offline_cpu = offline_rows_per_s(args.run, payloads, args.max_batch_size, n_off)
    dyn, one = results["dynamic batching"], results["max_batch_size 1"]
    print(f"\n{args.clients} closed-loop clients on {HOST}, {args.workers} server worker(s); load average (1 min) "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores\n")
    print("| configuration | requests | errors | throughput (req/s) | per server CPU-second | server CPU s "
          "| client CPU s | p50 (ms) | p95 (ms) | p99 (ms) | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | {r['per_cpu_s']:.0f} | {r['cpu_s']:.1f} | "
              f"{r['client_cpu_s']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['mean_batch']:.1f} |")
    print(f"| offline batched, no HTTP | {n_off} | - | {offline:.0f} | {offline_cpu:.0f} | {n_off / offline_cpu:.1f} | - "
          f"| - | - | - | {args.max_batch_size} |")
    print(f"\ndynamic / batch-1: {dyn['rps'] / one['rps']:.2f}x wall clock, {dyn['per_cpu_s'] / one['per_cpu_s']:.2f}x "
          f"per CPU-second; dynamic / offline: {100 * dyn['rps'] / offline:.0f}% wall clock, "
          f"{100 * dyn['per_cpu_s'] / offline_cpu:.0f}% per CPU-second")


if __name__ == "__main__":
    main()
