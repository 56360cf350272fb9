"""A real `polyfuse serve` process on a free loopback port: concurrent requests, API key, graceful shutdown."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from .conftest import as_json, files_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, base: str, seconds: float):
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.2)


def test_real_server_concurrent_requests_and_graceful_shutdown(serve_run, serve_data):
    port = free_port()
    env = dict(os.environ, PF_TEST_KEY="k3y")
    proc = subprocess.Popen([sys.executable, "-m", "polyfuse.cli", "serve", str(serve_run), "--port", str(port),
                             "--api-key-env", "PF_TEST_KEY", "--max-batch-size", "8", "--max-wait-ms", "1500",
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, 60)
        headers = {"x-api-key": "k3y"}
        assert httpx.post(f"{base}/v1/predict", json={"caption": "loud"}, timeout=10).status_code == 401
        bodies = [as_json(files_of(serve_data["train"], i)) for i in range(6)]

        def post(body):
            return httpx.post(f"{base}/v1/predict", json=body, headers=headers, timeout=30)

        with ThreadPoolExecutor(6) as pool:
            first = list(pool.map(post, bodies))
            assert [r.status_code for r in first] == [200] * 6
            # In flight (queued, waiting up to 1.5 s for their batch to fill) when SIGTERM arrives: still answered.
            pending = [pool.submit(post, b) for b in bodies]
            while "polyfuse_queue_depth 6" not in httpx.get(f"{base}/metrics", headers=headers, timeout=10).text:
                assert not any(f.done() for f in pending)
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT if sys.platform == "win32" else signal.SIGTERM)
            late = [f.result() for f in pending]
        assert [r.status_code for r in late] == [200] * 6
        assert [r.json() for r in late] == [r.json() for r in first]
        # uvicorn re-raises the signal once shut down, so the exit status says "terminated by SIGTERM".
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_share_the_port_and_stop_together(serve_run, serve_data):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "polyfuse.cli", "serve", str(serve_run), "--port", str(port),
                             "--workers", "2", "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, 90)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        body = as_json(files_of(serve_data["train"], 0))
        # Separate connections, so the kernel spreads them over both workers' sockets; same answer from each.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{base}/v1/predict", json=body, timeout=30), range(16)))
        assert [r.status_code for r in answers] == [200] * 16
        probs = [list(r.json()["predictions"][0]["probabilities"].values()) for r in answers]
        assert max(abs(a - b) for p in probs for a, b in zip(p, probs[0])) < 1e-6     # batch sizes differ: last bits
        # Each worker counts its own requests: fresh connections to /metrics reach both, and the counts add up.
        # (a worker is told apart by its latency sum; two workers may well hold 8 requests each)
        wanted = ('polyfuse_request_latency_seconds_count{route="/v1/predict"}',
                  'polyfuse_request_latency_seconds_sum{route="/v1/predict"}')
        seen = set()
        for _ in range(24):
            lines = httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
            seen.add(tuple(float(x.split()[-1]) for x in lines if x.split(" ")[0] in wanted))
        assert len(seen) == 2 and sum(count for _, count in seen) == 16, seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert all(status(pid) in ("Z", "X") for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()          # the workers follow (PR_SET_PDEATHSIG)
            proc.wait()


def children(pid: int) -> list[int]:
    """Worker processes of the server (spawned interpreters), from /proc."""
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
                cmd = open(f"/proc/{stat}/cmdline").read()
            except OSError:
                continue
            if int(fields[1]) == pid and "spawn_main" in cmd:
                out.append(int(stat))
    return out


def status(pid: int) -> str:
    """The process state letter ('R', 'S', 'Z'...); 'X' when it is gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_a_worker_dies_with_its_parent(tmp_path):
    """A worker outlives nothing: when its parent is SIGKILLed it gets SIGTERM (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "worker.pid"
    grandchild = ("import os, sys, time; from polyfuse.serving.worker import die_with; die_with(int(sys.argv[1])); "
                  f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    parent = ("import subprocess, sys, os, time; "
              f"subprocess.Popen([sys.executable, '-c', {grandchild!r}, str(os.getpid())]); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.time() + 60
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.time() < deadline
            time.sleep(0.1)
        worker = int(pidfile.read_text())
        assert status(worker) not in ("Z", "X")
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while status(worker) not in ("Z", "X") and time.time() < deadline:
            time.sleep(0.1)
        assert status(worker) in ("Z", "X")
    finally:
        if proc.poll() is None:
            proc.kill()
        if pidfile.exists() and pidfile.read_text() and status(int(pidfile.read_text())) not in ("Z", "X"):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
