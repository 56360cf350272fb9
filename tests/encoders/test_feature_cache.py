"""The frozen-tower feature cache: hits, misses, persistence across restarts, and invalidation."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from polyfuse.config import Config
from polyfuse.data.pretrained import tower_sources
from polyfuse.data.processors import Processors
from polyfuse.encoders import build_encoder


def setup(towers, cache_dir, modality, cache=True, **section):
    col = {"text": "t", "image": "img"}[modality]
    cfg = Config.from_dict({"schema": {modality: [col]}, modality: {"encoder": str(towers[modality]), **section},
                            "model": {"d_model": 16, "n_heads": 2, "freeze_encoders": True, "feature_cache": cache,
                                      "feature_cache_dir": str(cache_dir)}})
    procs = Processors.build(cfg, cfg.schema)
    torch.manual_seed(0)
    enc = build_encoder(modality, cfg, None, tower_sources(procs, pretrained_weights=True)[modality]).eval()
    return procs.by_modality[modality], enc


class Calls:
    """Counts the rows the tower actually computes."""
    def __init__(self, enc):
        self.rows, run = 0, enc._run

        def counted(part, idx):
            self.rows += len(idx)
            return run(part, idx)
        enc._run = counted


def write_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_hit_miss_restart_and_changed_file(towers, tmp_path):
    paths = write_images(tmp_path, 5)
    proc, enc = setup(towers, tmp_path / "cache", "image")
    calls = Calls(enc)
    part = proc.collate([proc(p) for p in paths] + [None])          # the last row has no image
    first, mask = enc.features(part)
    assert calls.rows == 5 and enc._cache.misses == 5 and not mask[5].any()
    # Same features as the tower computes without any cache.
    _, plain = setup(towers, tmp_path / "unused", "image", cache=False)
    expected, _ = plain.features(part)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    # Second epoch: every row is a hit, the tower does not run.
    again, _ = enc.features(part)
    assert calls.rows == 5 and enc._cache.hits == 5
    torch.testing.assert_close(again, first)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 5
    # A "restart": a new encoder object reads the entries back from disk.
    proc2, enc2 = setup(towers, tmp_path / "cache", "image")
    calls2 = Calls(enc2)
    restored, _ = enc2.features(proc2.collate([proc2(p) for p in paths]))
    assert calls2.rows == 0 and enc2._cache.hits == 5
    torch.testing.assert_close(restored, first[:5])
    # One file changes on disk: only that row is recomputed, and it gets the new image's features.
    Image.fromarray(np.full((20, 20, 3), 200, dtype=np.uint8)).save(paths[2])
    changed, _ = enc2.features(proc2.collate([proc2(p) for p in paths]))
    assert calls2.rows == 1
    assert not torch.allclose(changed[2], first[2])
    torch.testing.assert_close(changed[[0, 1, 3, 4]], first[[0, 1, 3, 4]])


def test_other_weights_or_preprocessing_never_hit(towers, tmp_path):
    proc, enc = setup(towers, tmp_path / "cache", "text")
    texts = ["the calm river", "a loud street today"]
    part = proc.collate([proc(t) for t in texts])
    first, _ = enc.features(part)
    # Same checkpoint, weights changed (as after fine-tuning and re-saving): a new identity, all misses.
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    state["tower.encoder.layer.1.output.dense.weight"] += 0.5 * torch.randn_like(state["tower.encoder.layer.1.output.dense.weight"])
    enc.load_state_dict(state)
    calls = Calls(enc)
    changed, _ = enc.features(part)
    assert calls.rows == 2 and not torch.allclose(changed, first)
    # Another preprocessing (shorter max_length truncates the ids): another key, a miss.
    proc3, enc3 = setup(towers, tmp_path / "cache", "text", max_length=3)
    calls3 = Calls(enc3)
    enc3.features(proc3.collate([proc3(t) for t in texts]))
    assert calls3.rows >= 1 and enc3._cache.misses == 2 and enc3._cache.hits == 0   # truncated, they may coincide


def test_corrupt_entry_is_a_miss_and_rewritten(towers, tmp_path):
    proc, enc = setup(towers, tmp_path / "cache", "text")
    part = proc.collate([proc("the old window")])
    first, _ = enc.features(part)
    (entry,) = (tmp_path / "cache").rglob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    proc2, enc2 = setup(towers, tmp_path / "cache", "text")
    calls = Calls(enc2)
    again, _ = enc2.features(part)
    assert calls.rows == 1
    torch.testing.assert_close(again, first)
    assert entry.read_bytes() != b"not a safetensors file"


def test_rows_that_share_a_file_in_one_batch_run_the_tower_once(towers, tmp_path):
    """Several questions about one image arrive together: one tower run each distinct image, and
    every row gets the features it would get alone."""
    paths = write_images(tmp_path, 3)
    proc, enc = setup(towers, tmp_path / "cache", "image")
    calls = Calls(enc)
    order = [0, 0, 1, 0, 2, 2]
    feats, _ = enc.features(proc.collate([proc(paths[i]) for i in order]))
    assert calls.rows == 3
    _, plain = setup(towers, tmp_path / "unused", "image", cache=False)
    expected, _ = plain.features(proc.collate([proc(p) for p in paths]))
    torch.testing.assert_close(feats, expected[order], atol=1e-5, rtol=1e-5)


def test_cache_only_for_fully_frozen_towers(towers, tmp_path):
    _, enc = setup(towers, tmp_path / "cache", "text")
    assert enc.cache_dir is not None
    cfg = Config.from_dict({"schema": {"text": ["t"]}, "text": {"encoder": str(towers["text"])},
                            "model": {"d_model": 16, "n_heads": 2, "lora": True}})
    assert build_encoder("text", cfg, None).cache_dir is None


def test_training_fills_the_cache_before_the_first_step(towers, tmp_path, monkeypatch):
    """Every training and validation row's tower output is computed once before Trainer.fit starts,
    so the first epoch costs what the others do (the time budget plans epochs from it)."""
    import pandas as pd

    from polyfuse.encoders.pretrained import TowerEncoder
    from polyfuse.recipes.train import train_run
    from polyfuse.training.trainer import Trainer
    paths = write_images(tmp_path, 24)
    df = pd.DataFrame({"img": [str(p) for p in paths], "y": [i % 2 for i in range(24)]})
    cfg = Config.from_dict({"schema": {"image": ["img"], "label": "y"}, "image": {"encoder": str(towers["image"])},
                            "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "freeze_encoders": True,
                                      "feature_cache_dir": str(tmp_path / "features")},
                            "train": {"epochs": 2, "batch_size": 8, "val_fraction": 0.25}})
    computed, at_fit = [], []
    run, fit = TowerEncoder._run, Trainer.fit
    monkeypatch.setattr(TowerEncoder, "_run", lambda self, part, idx: computed.extend(idx) or run(self, part, idx))
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: at_fit.append(len(computed)) or fit(self, *a, **k))
    train_run(cfg, df, out=tmp_path / "run", progress=False)
    assert at_fit == [24]                      # 18 training + 6 validation rows, each computed once, before fit
    assert len(computed) == 24                 # and never again: both epochs read the cache
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 24


def test_a_full_batch_of_equal_length_rows_equals_the_padded_path():
    """_scatter's shortcut (every row present, one length: a plain stack) gives what padding gives."""
    from polyfuse.encoders.pretrained import _scatter
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(5, 3, generator=g) for _ in range(4)]
    like = torch.zeros(1)
    h, mask = _scatter(rows, [0, 1, 2, 3], 4, 3, like)
    assert torch.equal(h, torch.stack(rows)) and bool(mask.all())
    # A row missing or shorter takes the padded path: zeros and False where there is nothing.
    h2, mask2 = _scatter(rows[:2] + [rows[2][:3]], [0, 2, 3], 4, 3, like)
    assert torch.equal(h2[0], rows[0]) and not bool(mask2[1].any()) and torch.equal(h2[2], rows[1])
    assert torch.equal(h2[3, :3], rows[2][:3]) and not bool(h2[3, 3:].any()) and mask2[3].tolist() == [True] * 3 + [False] * 2


def test_cache_cli_reports_each_towers_features_and_clears_them(tmp_path, capsys):
    """polyfuse cache info|clear --features: one folder per tower identity, sizes, and removal."""
    from polyfuse.cli.main import main
    from polyfuse.encoders.feature_cache import FeatureCache, cache_info
    root = tmp_path / "features"
    a, b = FeatureCache(root, "a" * 64), FeatureCache(root, "b" * 64)
    for i in range(3):
        a.put(f"{i:032x}", torch.zeros(4, 8))
    b.put("f" * 32, torch.zeros(2, 8))
    assert a.get(f"{1:032x}") is not None
    assert main(["cache", "info", "--features", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "4 cached tower outputs" in out and "2 tower(s)" in out and "a" * 32 + ": 3 entries" in out
    assert main(["cache", "clear", "--features", "--cache-dir", str(root)]) == 0
    assert cache_info(root)["entries"] == 0 and root.is_dir()
    assert FeatureCache(root, "a" * 64).get(f"{1:032x}") is None         # gone from disk: a miss
