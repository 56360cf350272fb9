"""Runs with pretrained towers through serving and search: the run folder alone rebuilds them.

A run with an audio tower serves (its graph inputs are the tower's values/lengths, not mel/mask),
and `embed` on a pretraining run with a tower reads the tower from the run, not from the path it
was first loaded from: moved or offline, it embeds the same."""
from __future__ import annotations

import base64
import shutil

import numpy as np
import pandas as pd
import pytest

from polyfuse.inference import Predictor
from polyfuse.recipes.pretrain import pretrain_run
from polyfuse.recipes.train import train_run
from polyfuse.retrieval import Embedder
from polyfuse.serving.app import create_app
from polyfuse.serving.backend import EagerBackend
from tests.serving.conftest import client_for

from .test_towers import tower_config


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_run_with_an_audio_tower_serves_what_predict_gives(towers, small_synth, tmp_path):
    cfg = tower_config(towers, tmp_path / "cache", ("text", "audio"), feature_cache=False)
    train_run(cfg, small_synth["train"], None, tmp_path / "run", progress=False)
    p = Predictor.load(tmp_path / "run")
    test = pd.read_csv(small_synth["test"]).head(6)
    want = p.predict(p.encode(p.read(small_synth["test"]))).outputs[:6]
    folder = small_synth["test"].parent
    rows = []
    for _, r in test.iterrows():
        row = {"caption": r["caption"]} if isinstance(r["caption"], str) else {}
        if isinstance(r["audio"], str):
            row["audio"] = base64.b64encode((folder / r["audio"]).read_bytes()).decode()
        rows.append(row)
    async with client_for(create_app(EagerBackend(tmp_path / "run"))) as c:
        r = await c.post("/v1/predict", json=rows)
        assert r.status_code == 200, r.text
        got = np.array([[a["probabilities"][k] for k in p.labels.classes] for a in r.json()["predictions"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        # Text alone: the audio column is absent from the whole batch and still collates.
        r = await c.post("/v1/predict", json={"caption": "quiet garden"})
        assert r.status_code == 200, r.text


def test_embed_reads_the_tower_from_the_run_not_its_original_path(towers, small_synth, tmp_path):
    bert = shutil.copytree(towers["text"], tmp_path / "bert")
    cfg = tower_config({"text": bert, "image": "scratch"}, tmp_path / "cache", ("text", "image"), feature_cache=False)
    cfg = cfg.merged({"schema": {"label": None}, "pretrain": {"objectives": ["contrastive"], "proj_dim": 16}})
    pretrain_run(cfg, small_synth["train"], tmp_path / "pre", progress=False)
    _, before, _, _ = Embedder.load(tmp_path / "pre", "cpu").embed_table(small_synth["test"])
    # The original checkpoint changes (here: is replaced by another random BERT), then disappears.
    shutil.rmtree(bert)
    from .conftest import write_bert
    write_bert(bert)
    _, changed, _, _ = Embedder.load(tmp_path / "pre", "cpu").embed_table(small_synth["test"])
    shutil.rmtree(bert)
    moved = shutil.move(tmp_path / "pre", tmp_path / "elsewhere")
    _, after, _, _ = Embedder.load(moved, "cpu").embed_table(small_synth["test"])
    for name in before:
        np.testing.assert_allclose(changed[name], before[name], atol=1e-5)
        np.testing.assert_allclose(after[name], before[name], atol=1e-5)
