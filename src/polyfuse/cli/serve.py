"""polyfuse serve: an HTTP server for a run folder (eager PyTorch) or an exported folder (ONNX Runtime)."""
from __future__ import annotations

import os

from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a run folder or an exported ONNX folder over HTTP")
    p.add_argument("run", help="run folder, or a folder written by `polyfuse export`")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int)
    p.add_argument("--api-key-env", metavar="VAR", help="require the API key held in this environment variable")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-wait-ms", type=float)
    p.add_argument("--timeout-ms", type=float, help="per-request timeout (answers 504)")
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-rows", type=int, help="rows per request")
    p.add_argument("--max-image-pixels", type=int)
    p.add_argument("--max-audio-seconds", type=float)
    p.add_argument("--index", metavar="FOLDER", help="also answer POST /v1/search from this index folder "
                   "(`polyfuse index`), built from this run's embeddings; a pretraining run serves search only")
    p.add_argument("--onnx-file", help="which .onnx file of an exported folder to serve")
    p.add_argument("--threads", type=int, help="intra-op threads of the model (1 avoids oversubscription on "
                   "a busy machine)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--workers", type=int, help="server processes, each with its own model and batcher, sharing "
                   "the port (default 1); with --threads 1, one per core")


def settings_from_args(args):
    from ..serving.settings import ServeConfig
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    return ServeConfig().merged(host=args.host, port=args.port, api_key=key, max_batch_size=args.max_batch_size,
                                max_wait_ms=args.max_wait_ms, timeout_ms=args.timeout_ms,
                                max_body_bytes=args.max_body_bytes, max_rows=args.max_rows,
                                max_image_pixels=args.max_image_pixels, max_audio_seconds=args.max_audio_seconds,
                                threads=args.threads, log_level=args.log_level, workers=args.workers)


def run(args):
    settings = settings_from_args(args)
    if settings.workers > 1:
        # Each worker process loads the model and builds its own app from these arguments (serving/worker.py).
        from ..serving.worker import serve_workers
        print(banner(args, settings, f"{settings.workers} worker processes"), flush=True)
        return serve_workers(args, settings, make_app)
    import uvicorn
    app, what, settings = make_app(args)
    print(banner(args, settings, what), flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.graceful_timeout_s)
    return 0


def banner(args, settings, what: str) -> str:
    return (f"serving {args.run} ({what}) on http://{settings.host}:{settings.port} "
            f"(docs at /docs{', API key required' if settings.api_key else ''})")


def make_app(args):
    """The FastAPI app for these arguments, what it serves (for the banner), and the settings."""
    from ..serving.app import create_app
    from ..serving.backend import load_backend
    settings = settings_from_args(args)
    pretraining = is_pretraining_run(args.run)
    if pretraining and not args.index:
        raise ConfigError(f"{args.run} is a pretraining run (no task head): serve it with --index FOLDER for "
                          f"/v1/search, or fine-tune it with `polyfuse train --init-from {args.run}`")
    search = None
    if args.index:
        from pathlib import Path

        from ..serving.search import SearchService
        if not (Path(args.run) / "model.safetensors").exists():
            raise ConfigError(f"--index needs a run folder with model.safetensors to embed queries; {args.run} "
                              "has none (an ONNX export cannot embed with the run's projection heads)")
        if settings.threads:
            import torch
            torch.set_num_threads(settings.threads)
        search = SearchService.load(args.run, args.index)
    backend = None if pretraining else load_backend(args.run, args.onnx_file, settings.threads)
    app = create_app(backend, settings, search)
    return app, (backend.name if backend else "search only"), settings


def is_pretraining_run(folder) -> bool:
    from ..runfolder import RunFolder
    run = RunFolder(folder)
    return run.is_finished() and run.kind == "pretrained"
