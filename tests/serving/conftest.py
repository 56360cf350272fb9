"""One tiny model trained once per test session on synthetic data, plus helpers to talk to the app."""
from __future__ import annotations

import base64
import os
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from polyfuse.config import Config
from polyfuse.data.synthetic import write_splits

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> dict:
    return write_splits(tmp_path_factory.mktemp("serve-data"), n=48, seed=3)


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, serve_data) -> Path:
    from polyfuse.recipes.train import train_run
    cfg = Config.from_dict({
        "schema": {"text": ["caption"], "image": ["image"], "audio": ["audio"], "label": "label"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2},
        "text": {"vocab_size": 200, "max_length": 16},
        "image": {"size": 16, "patch": 8},
        "audio": {"n_mels": 16, "max_seconds": 1.0},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "patience": None},
    })
    out = tmp_path_factory.mktemp("serve-run") / "run"
    train_run(cfg, serve_data["train"], None, out, progress=False)
    return out


@pytest.fixture(scope="session")
def eager(serve_run):
    from polyfuse.serving.backend import EagerBackend
    return EagerBackend(serve_run)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def client_for(app):
    """An httpx client on the app in-process (ASGITransport), with its startup and shutdown run."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client


def files_of(table: Path, row: int) -> dict:
    """The caption and the image/audio bytes of one synthetic row (None where the cell is empty)."""
    import pandas as pd
    df = pd.read_csv(table)
    r = df.iloc[row]
    out = {"caption": r["caption"] if isinstance(r["caption"], str) else None}
    for col in ("image", "audio"):
        out[col] = (table.parent / r[col]).read_bytes() if isinstance(r[col], str) else None
    return out


def as_json(cells: dict) -> dict:
    return {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in cells.items()
            if v is not None}


def as_multipart(cells: dict) -> tuple[dict, dict]:
    data = {k: v for k, v in cells.items() if isinstance(v, str)}
    files = {k: (f"{k}.bin", v) for k, v in cells.items() if isinstance(v, bytes)}
    return data, files
