"""Any PyTorch network as an image tower: `image.encoder = module:factory` (data/network.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from polyfuse.config import Config
from polyfuse.errors import ConfigError
from polyfuse.inference import Predictor
from polyfuse.recipes.train import train_run
from polyfuse.retrieval import Embedder

from . import network_factory

REF = "tests.encoders.network_factory:tiny_cnn"


def _cfg(cache_dir, **model):
    return Config.from_dict({
        "schema": {"image": ["image"], "text": ["caption"], "label": "label"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "feature_cache_dir": str(cache_dir), **model},
        "text": {"max_length": 16}, "image": {"encoder": REF},
        "train": {"epochs": 1, "batch_size": 16, "patience": None, "lr": 3e-3}})


def test_a_network_tower_trains_and_reloads_from_the_run_alone(small_synth, tmp_path):
    network_factory.CALLS.clear()
    pred, _ = train_run(_cfg(tmp_path / "cache"), small_synth["train"], small_synth["val"], tmp_path / "run",
                        progress=False)
    assert True in network_factory.CALLS                      # training started from the pretrained weights
    proc = pred.processors.by_modality["image"]
    assert proc.cfg.size == 16 and proc.mean.flatten().tolist() == pytest.approx([0.4] * 3)   # the network's own
    tuned = {k: v.clone() for k, v in pred.model.encoders["image"].tower.state_dict().items()}
    network_factory.CALLS.clear()
    again = Predictor.load(tmp_path / "run")
    assert network_factory.CALLS == [False]                   # reloading: architecture only, weights from the run
    for k, v in again.model.encoders["image"].tower.state_dict().items():
        assert torch.equal(v, tuned[k]), k
    test = again.encode(again.read(small_synth["test"]))
    np.testing.assert_allclose(again.predict(test).outputs, pred.predict(pred.encode(pred.read(small_synth["test"]))).outputs,
                               atol=1e-5)
    _, vectors, _, _ = Embedder.load(tmp_path / "run", "cpu").embed_table(small_synth["test"])
    assert all(np.isfinite(v).all() for v in vectors.values())


def test_a_frozen_network_keeps_its_weights_and_uses_the_feature_cache(small_synth, tmp_path):
    pred, _ = train_run(_cfg(tmp_path / "cache", freeze_encoders=True), small_synth["train"], None, tmp_path / "run",
                        progress=False)
    fresh = network_factory.tiny_cnn(pretrained=True).network.state_dict()
    for k, v in pred.model.encoders["image"].tower.state_dict().items():
        assert torch.equal(v, fresh[k]), k                    # BatchNorm statistics included: eval mode
    assert any((tmp_path / "cache").rglob("*")), "frozen tower outputs are cached"


def test_unfreeze_top_trains_only_the_declared_top_blocks(small_synth, tmp_path):
    cfg = _cfg(tmp_path / "cache", freeze_encoders=True, unfreeze_top_k=1).merged(
        {"image": {"encoder": "tests.encoders.network_factory:tiny_blocks"}})
    pred, _ = train_run(cfg, small_synth["train"], None, tmp_path / "run", progress=False)
    fresh = network_factory.tiny_blocks(pretrained=True).network.state_dict()
    tuned = pred.model.encoders["image"].tower.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "")
               for k, v in tuned.items() if v.dtype.is_floating_point and not torch.equal(v, fresh[k])}
    assert changed == {"blocks.2", "head"}                   # the top block and what follows it, nothing below
    assert not any((tmp_path / "cache").rglob("*.safetensors"))   # a tower that trains is never cached
    # A network without a block list cannot be partly unfrozen: the error says what to do instead.
    with pytest.raises(ConfigError, match="sets no `layers`"):
        train_run(_cfg(tmp_path / "c2", freeze_encoders=True, unfreeze_top_k=1), small_synth["train"], None, tmp_path / "r2", progress=False)


def test_bad_references_are_clear(small_synth, tmp_path):
    with pytest.raises(ConfigError, match="cannot import"):
        train_run(_cfg(tmp_path).merged({"image": {"encoder": "tests.encoders.network_factory:missing"}}),
                  small_synth["train"], None, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="NetworkTower"):
        from polyfuse.data.network import load_network
        load_network("tests.encoders.network_factory:not_a_tower", pretrained=True)
    with pytest.raises(ConfigError, match="for images"):
        Config.from_dict({"audio": {"encoder": REF}})


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_moved_network_tower_run_serves_what_predict_gives(small_synth, tmp_path):
    import base64
    import shutil

    import pandas as pd

    from polyfuse.serving.app import create_app
    from polyfuse.serving.backend import EagerBackend
    from tests.serving.conftest import client_for
    train_run(_cfg(tmp_path / "cache"), small_synth["train"], None, tmp_path / "run", progress=False)
    run = shutil.move(tmp_path / "run", tmp_path / "moved")
    p = Predictor.load(run)
    want = p.predict(p.encode(p.read(small_synth["test"]))).outputs[:5]
    folder = small_synth["test"].parent
    rows = []
    for _, r in pd.read_csv(small_synth["test"]).head(5).iterrows():
        row = {"caption": r["caption"]} if isinstance(r["caption"], str) else {}
        if isinstance(r["image"], str):
            row["image"] = base64.b64encode((folder / r["image"]).read_bytes()).decode()
        rows.append(row)
    async with client_for(create_app(EagerBackend(run))) as c:
        r = await c.post("/v1/predict", json=rows)
        assert r.status_code == 200, r.text
        got = np.array([[a["probabilities"][k] for k in p.labels.classes] for a in r.json()["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-5)
