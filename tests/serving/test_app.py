"""The server in-process (httpx ASGITransport): answers, formats, and every limit and bad input."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.serving.app import create_app
from polyfuse.serving.settings import ServeConfig

from .conftest import as_json, as_multipart, client_for, files_of

pytestmark = pytest.mark.anyio
ROWS = range(6)


def _png(w=8, h=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds: float, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(16000 * seconds), channels), np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_json_and_multipart_match_polyfuse_predict(eager, serve_run, serve_data, tmp_path):
    from polyfuse.cli.main import main
    assert main(["predict", str(serve_run), "--data", str(serve_data["test"]), "--out", str(tmp_path / "p.csv")]) == 0
    expected = pd.read_csv(tmp_path / "p.csv")
    proba_cols = [c for c in expected.columns if c.startswith("proba_")]
    rows = [files_of(serve_data["test"], i) for i in ROWS]
    async with client_for(create_app(eager)) as c:
        listed = await c.post("/v1/predict", json=[as_json(r) for r in rows])
        assert listed.status_code == 200, listed.text
        for i, cells in zip(ROWS, rows):
            data, files = as_multipart(cells)
            multi = await c.post("/v1/predict", data=data, files=files)
            single = await c.post("/v1/predict", json=as_json(cells))
            assert multi.status_code == single.status_code == 200, multi.text
            want = expected.loc[i, proba_cols].to_numpy(float)
            for answer in (listed.json()["predictions"][i], multi.json()["predictions"][0],
                           single.json()["predictions"][0]):
                got = np.array([answer["probabilities"][c[len("proba_"):]] for c in proba_cols])
                np.testing.assert_allclose(got, want, atol=2e-6)
                assert str(answer["prediction"]) == str(expected.loc[i, "prediction"])


async def test_any_subset_of_modalities_and_embeddings(eager, serve_data):
    cells = files_of(serve_data["test"], 0)
    cells["caption"] = cells["caption"] or "loud river"
    async with client_for(create_app(eager)) as c:
        for keep in (["caption"], ["image"], ["audio"], ["image", "audio"]):
            body = as_json({k: cells[k] for k in keep})
            r = await c.post("/v1/predict", json=body)
            assert r.status_code == 200, (keep, r.text)
            assert abs(sum(r.json()["predictions"][0]["probabilities"].values()) - 1) < 1e-5
        # Modality names work as keys when the model has one column of that modality.
        r = await c.post("/v1/embed", json={"text": cells["caption"], "image": as_json(cells)["image"]})
        assert r.status_code == 200, r.text
        e = r.json()["embeddings"][0]
        assert len(e["fused"]) == 32 and e["columns"]["audio"] is None and e["modalities"]["audio"] is None
        assert e["columns"]["caption"] == e["modalities"]["text"] and len(e["columns"]["image"]) == 32


async def test_health_ready_metrics_docs(eager):
    async with client_for(create_app(eager)) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.post("/v1/predict", json={"caption": "calm street"})).status_code == 200
        assert (await c.post("/v1/predict", json={"nope": "x"})).status_code == 422
        text = (await c.get("/metrics")).text
        for name in ("polyfuse_requests_total", "polyfuse_request_errors_total", "polyfuse_request_latency_seconds_bucket",
                     "polyfuse_batch_size_bucket", "polyfuse_queue_depth"):
            assert name in text
        assert 'polyfuse_requests_total{route="/v1/predict",status="200"} 1' in text
        assert 'polyfuse_request_errors_total{route="/v1/predict",status="422"} 1' in text
        assert (await c.get("/docs")).status_code == 200
        spec = (await c.get("/openapi.json")).json()
        body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(body)


LIMITS = ServeConfig(max_body_bytes=200_000, max_rows=2, max_text_chars=50, max_image_pixels=100, max_audio_seconds=0.5)


@pytest.mark.parametrize("body, status, field", [
    ({"image": base64.b64encode(_png(8, 8)).decode()}, 200, None),
    ({"image": base64.b64encode(_png(11, 10)).decode()}, 413, "image"),            # 110 pixels > 100
    ({"audio": base64.b64encode(_wav(0.6)).decode()}, 413, "audio"),               # 0.6 s > 0.5 s
    ({"audio": base64.b64encode(_wav(0.1, channels=9)).decode()}, 413, "audio"),   # 9 channels > 8
    ({"audio": base64.b64encode(_wav(0.1, channels=2)).decode()}, 200, None),
    ({"caption": "x" * 51}, 413, "caption"),
    ([{"caption": "a"}] * 3, 413, "body"),                                          # 3 rows > 2
    ({"image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()}, 400, "image"),   # corrupt PNG
    ({"audio": base64.b64encode(b"RIFF\x10\0\0\0WAVEfmt " + b"\x01" * 30).decode()}, 400, "audio"),
    ({"image": "not base64!"}, 400, "image"),
    ([{"caption": "ok"}, {"image": "%%%"}], 400, "rows[1].image"),
    ({"caption": "   "}, 400, "caption"),
    ({"unknown": "x"}, 422, "unknown"),
    ({}, 422, "body"),
    ([], 422, "body"),
    ([1, 2], 422, "rows[0]"),
    ({"caption": {"a": 1}}, 422, "caption"),
    ({"image": 12}, 422, "image"),
    ("just a string", 422, "body"),
])
async def test_limits_and_bad_inputs(eager, body, status, field):
    async with client_for(create_app(eager, LIMITS)) as c:
        r = await c.post("/v1/predict", json=body)
        assert r.status_code == status, r.text
        if status != 200:
            assert r.json()["field"] == field and r.json()["error"]


async def test_body_limits_content_type_and_paths(eager, serve_data):
    path = str(serve_data["test"].parent / "images" / "00040.png")     # a real image on the server
    async with client_for(create_app(eager, LIMITS)) as c:
        r = await c.post("/v1/predict", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body"
        assert 'polyfuse_requests_total{route="/v1/predict",status="413"} 1' in (await c.get("/metrics")).text

        async def chunks():                       # no Content-Length: counted as it streams
            for _ in range(40):
                yield b" " * 10_000
        r = await c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = await c.post("/v1/predict", content=b"caption=x", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = await c.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] == "body"
        # A string is content, never a path: the server does not open its own file.
        r = await c.post("/v1/predict", json={"image": path})
        assert r.status_code == 400 and "base64" in r.json()["error"]
        r = await c.post("/v1/predict", files={"image": ("x.png", b"garbage")})
        assert r.status_code == 400 and r.json()["field"] == "image"
        r = await c.post("/v1/predict", data={"image": path})               # a form text field for a file input
        assert r.status_code == 422 and r.json()["field"] == "image"
        r = await c.post("/v1/predict", content=b"--zz\r\nbroken", headers={"content-type": "multipart/form-data; boundary=zz"})
        assert r.status_code in (400, 422)
        assert (await c.get("/healthz")).status_code == 200       # still serving


async def test_api_key(eager):
    async with client_for(create_app(eager, ServeConfig(api_key="s3cret"))) as c:
        assert (await c.post("/v1/predict", json={"caption": "a"})).status_code == 401
        assert (await c.post("/v1/predict", json={"caption": "a"}, headers={"x-api-key": "wrong"})).status_code == 401
        r = await c.post("/v1/predict", json={"caption": "a"}, headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/healthz")).status_code == 200     # probes need no key


async def test_timeout_answers_504_and_server_recovers(eager):
    import time

    class Slow:
        def __getattr__(self, name):
            return getattr(eager, name)

        def run(self, rows):
            time.sleep(0.3)
            return eager.run(rows)

    async with client_for(create_app(Slow(), ServeConfig(timeout_ms=50))) as c:
        r = await c.post("/v1/predict", json={"caption": "calm street"})
        assert r.status_code == 504 and r.json()["field"] == "timeout"
    async with client_for(create_app(Slow(), ServeConfig(timeout_ms=5000))) as c:
        assert (await c.post("/v1/predict", json={"caption": "calm street"})).status_code == 200


async def test_concurrent_requests_batch_together_and_get_their_own_answers(eager, serve_data):
    import anyio
    rows = [files_of(serve_data["train"], i) for i in range(12)]
    alone = [eager.run([decode(eager, r)])["probabilities"][0] for r in rows]
    app = create_app(eager, ServeConfig(max_batch_size=8, max_wait_ms=200))
    answers = {}
    async with client_for(app) as c:
        async def one(i):
            answers[i] = await c.post("/v1/predict", json=as_json(rows[i]))
        async with anyio.create_task_group() as tg:
            for i in range(len(rows)):
                tg.start_soon(one, i)
        metrics = (await c.get("/metrics")).text
    for i, r in answers.items():
        got = np.array(list(r.json()["predictions"][0]["probabilities"].values()))
        np.testing.assert_allclose(got, alone[i], atol=2e-6)
    batches = int(next(l for l in metrics.splitlines() if l.startswith("polyfuse_batch_size_count")).split()[-1])
    assert batches <= 4          # 12 requests, at most 8 rows a batch (plus the warm-up batch)


def decode(backend, cells):
    from polyfuse.serving.protocol import decode_rows
    return decode_rows([{k: (v, k) for k, v in cells.items() if v is not None}], backend, ServeConfig())[0]
