"""`polyfuse serve --workers N`: N server processes on one port, each with its own model and batcher.

Python runs one thread of request handling at a time (the GIL), so one process uses about one core
however many threads it has. Each worker binds the port itself with SO_REUSEPORT, and the kernel
spreads new connections evenly over the workers' sockets. With one socket shared by all (uvicorn's
own --workers) whichever process wakes first accepts a burst of keep-alive connections: in two of
five trials one worker got so few of 32 that it ran batches of 1-2, at full per-request cost.
Linux only; metrics are per process. SIGTERM or SIGINT to the parent stops every worker gracefully.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import sys

from ..errors import ConfigError, PolyfuseError


def serve_workers(args: argparse.Namespace, settings, make_app) -> int:
    """Start settings.workers processes and wait for them; the exit status is the first failure's, else 0.
    make_app(args) -> (app, what, settings) is a module-level function (each spawned worker gets it by
    name), so this module does not import the CLI that calls it."""
    if not sys.platform.startswith("linux"):
        raise ConfigError("--workers > 1 needs Linux (SO_REUSEPORT balancing); run one process per port elsewhere")
    ctx = multiprocessing.get_context("spawn")       # fresh interpreters: no forked torch or event-loop state
    argd = {k: v for k, v in vars(args).items() if k != "func"}
    # Workers bind only once all have loaded their model: a worker bound early would take every
    # keep-alive connection opened meanwhile, and keep it.
    loaded = ctx.Barrier(settings.workers)
    procs = [ctx.Process(target=worker_main, args=(make_app, argd, loaded, os.getpid()), name=f"polyfuse-serve-{i}",
                         daemon=False)
             for i in range(settings.workers)]
    stopping = []

    def stop(signum, frame):
        # SIGTERM to each worker: graceful in uvicorn (a repeated SIGINT would force an exit, and a
        # Ctrl-C in a terminal already reaches every process of the group).
        stopping.append(signum)
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        from multiprocessing.connection import wait
        pending = list(procs)
        while pending:
            done = wait([p.sentinel for p in pending])
            for p in [p for p in pending if p.sentinel in done]:
                p.join()
                pending.remove(p)
                if not stopping:          # a worker died on its own: stop the others too
                    stop(None, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)]
    return failed[0] if failed and failed[0] > 0 else (1 if failed else 0)


def worker_main(make_app, argd: dict, loaded, parent: int):
    import uvicorn

    die_with(parent)
    try:
        app, _, settings = make_app(argparse.Namespace(**argd))
    except PolyfuseError as e:        # said once per worker, as `polyfuse serve` says it, not as a traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    loaded.wait()       # a worker that fails to load makes the parent stop the others (SIGTERM)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    config = uvicorn.Config(app, log_level=settings.log_level, timeout_graceful_shutdown=settings.graceful_timeout_s)
    uvicorn.Server(config).run(sockets=[sock])


def die_with(parent: int):
    """SIGTERM this worker when the parent dies, even by SIGKILL: an orphan would keep serving on the
    port (SO_REUSEPORT) with nobody to stop it."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:        # the parent died before the line above
        sys.exit(1)
