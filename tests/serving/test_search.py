"""POST /v1/search in-process: the same hits as `polyfuse search`, and each bad request's status."""
from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from polyfuse.retrieval import Embedder, Index, embed_to_folder, index_collection
from polyfuse.serving.app import create_app
from polyfuse.serving.search import SearchService
from tests.retrieval.conftest import save_untrained_pretrained_run, save_untrained_run

from .conftest import client_for

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def collection(serve_data, tmp_path_factory):
    """A pretraining run (contrastive heads), its test-table embeddings and a flat index collection."""
    root = tmp_path_factory.mktemp("search")
    run, _ = save_untrained_pretrained_run(root / "pre", serve_data["train"])
    emb = Embedder.load(run)
    embed_to_folder(emb, serve_data["test"], root / "emb", progress=False)
    index_collection(root / "emb", root / "idx")
    return run, root / "idx", emb


async def test_search_matches_the_python_api(collection, serve_data):
    run, idx, emb = collection
    service = SearchService(emb, idx)
    df = pd.read_csv(serve_data["test"])
    image = (serve_data["test"].parent / df["image"][0]).read_bytes()
    async with client_for(create_app(None, search=service)) as c:
        r = await c.post("/v1/search", json={"query": {"text": "loud morning"}, "target": "image", "k": 4})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["query_column"] == "caption" and got["target"] == "image"
        expected = Index.load(idx, target="image").search(emb.embed_query("loud morning", "text")[1], 4)
        assert [h["id"] for h in got["hits"]] == expected["_id"].tolist()
        assert np.allclose([h["score"] for h in got["hits"]], expected["_score"], atol=1e-5)
        assert [h["rank"] for h in got["hits"]] == [1, 2, 3, 4]
        assert got["hits"][0]["row"]["shape"] in ("horizontal", "vertical")

        # An image sent as base64 bytes: its own row comes first in the image index.
        r = await c.post("/v1/search", json={"query": {"image": base64.b64encode(image).decode()},
                                             "target": "image", "k": 1})
        assert r.status_code == 200 and r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)

        # Filters run inside the index: every hit matches.
        r = await c.post("/v1/search", json={"query": {"caption": "quiet"}, "target": "audio", "k": 50,
                                             "where": {"shape": "vertical"}})
        hits = r.json()["hits"]
        assert r.status_code == 200 and hits and all(h["row"]["shape"] == "vertical" for h in hits)
        assert len(hits) == int(((df["shape"] == "vertical") & df["audio"].notna()).sum())

        info = (await c.get("/v1/model")).json()
        assert info["backend"] == "search only" and set(info["indexes"]) == {"caption", "image", "audio", "fused"}
        assert (await c.post("/v1/predict", json={"caption": "x"})).status_code == 404   # no task head
        assert "/v1/search" in (await c.get("/openapi.json")).json()["paths"]


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    ({"query": {"text": "a", "image": "AAAA"}}, 422, "query"),
    ({"query": {}}, 422, "query"),
    ({"query": "a dog"}, 422, "query"),
    ({"query": {"smell": "sweet"}}, 422, "smell"),
    ({"query": {"text": "a"}, "k": 0}, 422, "k"),
    ({"query": {"text": "a"}, "k": "ten"}, 422, "k"),
    ({"query": {"text": "a"}, "target": "video"}, 422, "target"),
    ({"query": {"text": "a"}, "where": {"nope": "x"}}, 422, "where"),
    ({"query": {"text": "a"}, "where": {"shape": "round"}}, 422, "where"),
    ({"query": {"text": "a"}, "where": {"shape": 3}}, 422, "where"),
    ({"query": {"image": "not base64!"}}, 400, "image"),
    ({"query": {"image": base64.b64encode(b"not a png").decode()}}, 400, "image"),
    ({"query": {"audio": "/etc/passwd"}}, 400, "audio"),          # a path is bytes to decode, never opened
    ({"query": {"text": "a"}, "limit": 3}, 422, "limit"),
])
async def test_bad_search_requests(collection, body, status, field):
    run, idx, emb = collection
    async with client_for(create_app(None, search=SearchService(emb, idx))) as c:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await c.post("/v1/search", **kw)
        assert r.status_code == status, r.text
        assert r.json()["field"] == field


async def test_search_beside_predict_and_mismatched_index(collection, serve_run, serve_data, eager, tmp_path):
    run, idx, emb = collection
    # A supervised run serves /v1/predict and /v1/search from its own index.
    own = Embedder.load(serve_run)
    embed_to_folder(own, serve_data["test"], tmp_path / "emb", progress=False)
    index_collection(tmp_path / "emb", tmp_path / "idx")
    async with client_for(create_app(eager, search=SearchService(own, tmp_path / "idx"))) as c:
        assert (await c.post("/v1/predict", json={"caption": "loud"})).status_code == 200
        r = await c.post("/v1/search", json={"query": {"text": "loud"}, "target": "fused", "k": 2})
        assert r.status_code == 200 and len(r.json()["hits"]) == 2
    # An index of another model is refused when the service starts, not on the first request.
    other = save_untrained_run(tmp_path / "other", serve_data["train"], seed=5)
    with pytest.raises(Exception, match="built from model"):
        SearchService.load(other, idx)


def test_serve_cli_refuses_a_pretraining_run_without_an_index(collection, capsys):
    from polyfuse.cli.main import main
    run, idx, emb = collection
    assert main(["serve", str(run)]) == 2
    assert "pretraining run" in capsys.readouterr().err


def test_search_fuzz_no_server_errors(collection):
    """/v1/search fuzzed from its OpenAPI schema (schemathesis): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    run, idx, emb = collection
    app = create_app(None, search=SearchService(emb, idx))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    op = next(r.ok() for r in schema.get_all_operations() if r.ok().path == "/v1/search")
    statuses = []

    @given(case=op.as_strategy())
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
    check()
    assert max(statuses) < 500 and len(set(statuses)) >= 2
