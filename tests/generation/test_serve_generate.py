"""POST /v1/generate: the server writes what the Generator writes, batched, limited and streamed."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest
import torch

from polyfuse.generation.run import Generator

from ..serving.conftest import client_for
from .test_generation import cfg_for, write_scenes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, llama):
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen-serve")
    cfg = cfg_for(llama, decoder_train="full")
    cfg.train.epochs = 6               # half-trained: texts differ in length, which is what batching must survive
    train_generation(cfg, write_scenes(root, 32, seed=0), out=root / "run", progress=False)
    return root


def app_for(run, **settings):
    from polyfuse.serving.app import create_app
    from polyfuse.serving.backend import load_backend
    from polyfuse.serving.settings import ServeConfig
    return create_app(load_backend(run), ServeConfig().merged(**settings))


def rows_of(table) -> list[dict]:
    out = []
    for _, r in table.iterrows():
        with open(r["image"], "rb") as f:
            out.append({"image": base64.b64encode(f.read()).decode(), "note": r["note"]})
    return out


def expected(run, table, **decoding) -> list[str]:
    gen = Generator.load(run)
    return gen.generate(gen.encode(gen.read(table)), **decoding)


def sse(body: str) -> list[tuple[str | None, dict]]:
    events = []
    for block in filter(None, body.split("\n\n")):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        events.append((name, data))
    return events


async def test_generate_equals_the_generator_for_a_list_of_rows(gen_run, tmp_path):
    table = write_scenes(tmp_path, 6, seed=7)
    async with client_for(app_for(gen_run / "run")) as client:
        r = await client.post("/v1/generate", json=rows_of(table))
        assert r.status_code == 200, r.text
        one = await client.post("/v1/generate", json=rows_of(table)[0])
        info = (await client.get("/v1/model")).json()
    assert [g["text"] for g in r.json()["generated"]] == expected(gen_run / "run", table)
    assert one.json()["generated"][0]["text"] == r.json()["generated"][0]["text"]
    assert info["task"] == "generation" and set(info["columns"]) == {"image", "note"}


async def test_concurrent_requests_with_their_own_token_limits_get_their_own_texts(gen_run, tmp_path):
    """Requests batched together decode for the longest limit; each row keeps its own."""
    table = write_scenes(tmp_path, 8, seed=8)
    rows = rows_of(table)
    full = expected(gen_run / "run", table)
    short = expected(gen_run / "run", table, max_new_tokens=2)
    assert full != short
    async with client_for(app_for(gen_run / "run", max_wait_ms=200, max_batch_size=16)) as client:
        answers = await asyncio.gather(*[
            client.post("/v1/generate", json={"inputs": row, "max_new_tokens": 2 if i % 2 else 8})
            for i, row in enumerate(rows)])
    got = [a.json()["generated"][0]["text"] for a in answers]
    assert got == [short[i] if i % 2 else full[i] for i in range(len(rows))]


async def test_streamed_pieces_add_up_to_the_text(gen_run, tmp_path):
    table = write_scenes(tmp_path, 3, seed=9)
    async with client_for(app_for(gen_run / "run")) as client:
        r = await client.post("/v1/generate", json={"inputs": rows_of(table), "stream": True})
        plain = await client.post("/v1/generate", json={"inputs": rows_of(table)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    name, last = events[-1]
    assert name is None and last["done"] is True
    pieces = ["" for _ in range(3)]
    for _, data in events[:-1]:
        pieces[data["row"]] += data["text"]
    final = [g["text"] for g in last["generated"]]
    assert final == [g["text"] for g in plain.json()["generated"]] == expected(gen_run / "run", table)
    assert [p.strip() for p in pieces] == [t.strip() for t in final]
    assert len(events) > 2                      # text arrived in pieces, not once at the end


async def test_multipart_and_bad_requests(gen_run, tmp_path):
    table = write_scenes(tmp_path, 1, seed=10)
    with open(table["image"][0], "rb") as f:
        image = f.read()
    async with client_for(app_for(gen_run / "run")) as client:
        form = await client.post("/v1/generate", data={"note": table["note"][0], "max_new_tokens": "2"},
                                 files={"image": ("x.png", image)})
        too_many = await client.post("/v1/generate", json={"inputs": rows_of(table), "max_new_tokens": 999})
        unknown = await client.post("/v1/generate", json={"inputs": rows_of(table), "temperature": 3})
        bad_image = await client.post("/v1/generate", json={"image": base64.b64encode(b"not a png").decode()})
        no_predict = await client.post("/v1/predict", json=rows_of(table))
    assert form.status_code == 200, form.text
    assert form.json()["generated"][0]["text"] == expected(gen_run / "run", table, max_new_tokens=2)[0]
    assert too_many.status_code == 422 and too_many.json()["field"] == "max_new_tokens"
    assert unknown.status_code == 422 and "temperature" in unknown.json()["error"]
    assert bad_image.status_code == 400 and bad_image.json()["field"] == "image"
    assert no_predict.status_code == 404
