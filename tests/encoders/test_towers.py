"""Pretrained Hugging Face towers through the real code path: train, predict, save, reload offline."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from polyfuse.config import Config
from polyfuse.data.pretrained import tower_sources
from polyfuse.data.processors import Processors
from polyfuse.errors import ConfigError
from polyfuse.inference import Predictor
from polyfuse.model import PolyfuseModel
from polyfuse.recipes.train import train_run


def tower_config(towers, cache_dir, modalities=("text", "image", "audio"), **model):
    cols = {"text": "caption", "image": "image", "audio": "audio"}
    d = {"schema": {m: [cols[m]] for m in modalities} | {"label": "label"},
         "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "feature_cache_dir": str(cache_dir), **model},
         "text": {"max_length": 16}, "audio": {"max_seconds": 0.5},
         "train": {"epochs": 1, "batch_size": 16, "patience": None, "lr": 3e-3, "on_bad_row": "skip"}}
    for m in modalities:
        d[m] = {**d.get(m, {}), "encoder": str(towers[m])}
    return Config.from_dict(d)


def tower_state(model, modality):
    return {k: v.clone() for k, v in model.encoders[modality].tower.state_dict().items()}


def test_train_save_reload_offline(towers, small_synth, tmp_path):
    # Copies of the checkpoints, deleted after training: the run folder alone must rebuild the model.
    local = {m: shutil.copytree(p, tmp_path / f"ckpt_{m}") for m, p in towers.items()}
    cfg = tower_config(local, tmp_path / "cache", freeze_encoders=True)
    pred, summary = train_run(cfg, small_synth["train"], small_synth["val"], tmp_path / "run", progress=False)
    for m in local:
        shutil.rmtree(local[m])
        assert (tmp_path / "run" / "processors" / f"{m}_tower" / "config.json").exists()
    again = Predictor.load(tmp_path / "run")
    test = again.encode(again.read(small_synth["test"]))
    np.testing.assert_allclose(again.predict(test).outputs, pred.predict(pred.encode(pred.read(small_synth["test"]))).outputs,
                               atol=1e-5)
    assert summary["epoch"] == 1


def test_freezing_keeps_tower_weights(towers, small_synth, tmp_path):
    cfg = tower_config(towers, tmp_path / "cache", ("text", "image"), freeze_encoders=True, feature_cache=False)
    pred, _ = _train(cfg, small_synth, tmp_path)
    fresh = PolyfuseModel(cfg, cfg.schema, 4, None, towers=tower_sources(pred.processors, pretrained_weights=True))
    for m in ("text", "image"):
        before, after = tower_state(fresh, m), tower_state(pred.model, m)
        assert all(torch.equal(before[k], after[k]) for k in before), m
        assert not torch.equal(fresh.encoders[m].proj.weight, pred.model.encoders[m].proj.weight)


def test_unfreeze_top_k_trains_only_top_layer(towers, small_synth, tmp_path):
    cfg = tower_config(towers, tmp_path / "cache", ("text",), freeze_encoders=True, unfreeze_top_k=1)
    pred, _ = _train(cfg, small_synth, tmp_path)
    fresh = PolyfuseModel(cfg, cfg.schema, 4, None, towers=tower_sources(pred.processors, pretrained_weights=True))
    before, after = tower_state(fresh, "text"), tower_state(pred.model, "text")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)[:5]


def test_lora_trains_adapters_only_and_reloads(towers, small_synth, tmp_path):
    cfg = tower_config(towers, tmp_path / "cache", ("text",), lora=True, lora_rank=4)
    pred, _ = _train(cfg, small_synth, tmp_path)
    state = tower_state(pred.model, "text")
    lora = [k for k in state if "lora_" in k]
    assert lora and all(p.requires_grad == ("lora_" in n) for n, p in pred.model.encoders["text"].tower.named_parameters())
    assert any(state[k].abs().sum() > 0 for k in lora if "lora_B" in k)     # B starts at zero: it trained
    fresh = PolyfuseModel(cfg, cfg.schema, 4, None, towers=tower_sources(pred.processors, pretrained_weights=True))
    base = tower_state(fresh, "text")
    assert all(torch.equal(base[k], state[k]) for k in base if "lora_" not in k)
    again = Predictor.load(tmp_path / "run")
    data = again.encode(again.read(small_synth["test"]))
    np.testing.assert_allclose(again.predict(data).outputs, pred.predict(data).outputs, atol=1e-5)


def test_config_validation(towers, tmp_path):
    with pytest.raises(ConfigError, match="needs model.freeze_encoders"):
        tower_config(towers, tmp_path, ("text",), unfreeze_top_k=1)
    with pytest.raises(ConfigError, match="cannot be combined"):
        tower_config(towers, tmp_path, ("text",), freeze_encoders=True, unfreeze_top_k=1, lora=True)
    with pytest.raises(ConfigError, match="need a pretrained tower"):
        Config.from_dict({"model": {"freeze_encoders": True}})
    with pytest.raises(ConfigError, match="for text only"):
        Config.from_dict({"image": {"encoder": "word2vec"}})
    cfg = Config.from_dict({"schema": {"text": ["caption"]}, "text": {"encoder": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="text.encoder .*nowhere"):
        Processors.build(cfg, cfg.schema)


def test_cli_flags(towers):
    from polyfuse.cli.main import build_parser
    from polyfuse.cli.train import config_from_args
    args = build_parser().parse_args(["train", "--train", "x.csv", "--out", "r", "--text-encoder", str(towers["text"]),
                                      "--image-encoder", str(towers["image"]), "--unfreeze-top", "1",
                                      "--feature-cache-dir", "/tmp/fc"])
    cfg, fixed = config_from_args(args)
    assert cfg.text.encoder == str(towers["text"]) and cfg.image.encoder == str(towers["image"])
    assert cfg.model.freeze_encoders and cfg.model.unfreeze_top_k == 1 and cfg.model.feature_cache_dir == "/tmp/fc"
    assert cfg.audio.encoder == "scratch" and not cfg.model.lora
    assert {"text.encoder", "image.encoder", "model.unfreeze_top_k", "model.freeze_encoders"} <= fixed


def _train(cfg, synth, tmp_path):
    return train_run(cfg, synth["train"], None, tmp_path / "run", progress=False)
