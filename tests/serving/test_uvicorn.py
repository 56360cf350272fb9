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


def test_real_server_concurrent_requests_and_graceful_shutdown(serve_run, serve_data):
    port = free_port()
    env = dict(os.environ, PF_TEST_KEY="k3y")
    proc = subprocess.Popen([sys.executable, "-m", "polyfuse.cli", "serve", str(serve_run), "--port", str(port),
                             "--api-key-env", "PF_TEST_KEY", "--max-batch-size", "8", "--max-wait-ms", "1500",
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
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
