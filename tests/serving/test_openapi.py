"""The OpenAPI document lists every answer: response models of predict/embed/healthz/readyz and the
shared error model for each error status; and the answers themselves are unchanged by it."""
from __future__ import annotations

import pytest

from polyfuse.serving.app import create_app
from polyfuse.serving.settings import ServeConfig

from .conftest import client_for

pytestmark = pytest.mark.anyio


def json_schema(spec: dict, path: str, method: str, status: int) -> dict:
    response = spec["paths"][path][method]["responses"][str(status)]
    ref = response["content"]["application/json"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


async def test_openapi_lists_response_and_error_models(eager):
    async with client_for(create_app(eager)) as c:
        spec = (await c.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorBody"]["required"]) == {"error", "field", "status"}
    for path in ("/v1/predict", "/v1/embed"):
        for status in (400, 401, 413, 415, 422, 504):
            assert json_schema(spec, path, "post", status) == schemas["ErrorBody"], (path, status)
    assert set(json_schema(spec, "/v1/predict", "post", 200)["properties"]) == {"predictions", "backend"}
    assert set(schemas["Prediction"]["properties"]) == {"prediction", "probabilities"}
    assert schemas["Prediction"]["required"] == ["prediction"]          # regression answers have no probabilities
    assert set(json_schema(spec, "/v1/embed", "post", 200)["properties"]) == {"embeddings", "backend"}
    assert set(schemas["Embedding"]["required"]) == {"fused", "columns", "modalities"}
    assert json_schema(spec, "/healthz", "get", 200) == schemas["Status"]
    assert json_schema(spec, "/readyz", "get", 200) == json_schema(spec, "/readyz", "get", 503) == schemas["Status"]
    for path in ("/v1/model", "/metrics"):               # their 401 is JSON too, whatever the route returns
        assert json_schema(spec, path, "get", 401) == schemas["ErrorBody"], path
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


async def test_answers_keep_their_exact_keys(eager):
    """The models only document: answers are not re-serialized through them (no added null keys)."""
    async with client_for(create_app(eager, ServeConfig(api_key="k"))) as c:
        h = {"x-api-key": "k"}
        r = await c.post("/v1/predict", json={"caption": "calm street"}, headers=h)
        assert r.status_code == 200 and list(r.json()) == ["predictions", "backend"]
        assert list(r.json()["predictions"][0]) == ["prediction", "probabilities"]
        r = await c.post("/v1/embed", json={"caption": "calm street"}, headers=h)
        assert list(r.json()["embeddings"][0]) == ["fused", "columns", "modalities"]
        assert r.json()["embeddings"][0]["columns"]["image"] is None
        r = await c.post("/v1/predict", json={"caption": "calm street"})
        assert r.status_code == 401 and list(r.json()) == ["error", "field", "status"]
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).json() == {"status": "ready"}
