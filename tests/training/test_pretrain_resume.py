"""An interrupted pretraining run continued with resume=True ends exactly where an unbroken run ends;
a validation table adds each objective's held-out loss to the log."""
import json

import pytest
import torch
from safetensors.torch import load_file

import polyfuse.training.trainer as trainer
from polyfuse.errors import ConfigError
from polyfuse.recipes.pretrain import pretrain_run
from tests.conftest import tiny_config


class Interrupt(Exception):
    pass


def _log(run):
    drop = {"elapsed_s", "samples_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "log.jsonl").read_text().splitlines()]


def _cfg():
    return tiny_config(train={"epochs": 3}, model={"modality_dropout": 0.2, "dropout": 0.1},
                       augment={"enabled": True})


def _pcfg(cfg):
    return cfg.merged({"pretrain": {"objectives": ["contrastive", "itm", "mlm", "masked_patch"], "proj_dim": 16}})


def test_pretrain_resume_equals_unbroken_run(synth, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    pretrain_run(_pcfg(_cfg()), synth["train"], tmp_path / "a", progress=False, val=synth["val"])

    def stop_after_first(state):
        if state["epoch"] == 1:
            raise Interrupt
    monkeypatch.setattr(trainer, "after_epoch", stop_after_first)
    with pytest.raises(Interrupt):
        pretrain_run(_pcfg(_cfg()), synth["train"], tmp_path / "b", progress=False, val=synth["val"])
    monkeypatch.undo()
    assert len(_log(tmp_path / "b")) == 1
    with pytest.raises(ConfigError, match="--resume"):            # never silently overwritten
        pretrain_run(_pcfg(_cfg()), synth["train"], tmp_path / "b", progress=False)
    pretrain_run(_pcfg(_cfg()), synth["train"], tmp_path / "b", progress=False, val=synth["val"], resume=True)

    log_a, log_b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert log_a == log_b and [r["epoch"] for r in log_b] == [1, 2, 3]
    for key in ("val_loss", "val_mlm_loss", "val_itm_loss", "val_contrastive_loss", "val_masked_patch_loss"):
        assert key in log_a[-1], key
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_validation_losses_do_not_move_training(synth, tmp_path):
    """Scoring a validation table draws from its own seeded RNG: the training run is unchanged by it."""
    torch.set_num_threads(1)
    cfg = tiny_config(train={"epochs": 2}, model={"modality_dropout": 0.2})
    pretrain_run(_pcfg(cfg), synth["train"], tmp_path / "with", progress=False, val=synth["val"])
    pretrain_run(_pcfg(cfg), synth["train"], tmp_path / "without", progress=False)
    with_val, without = _log(tmp_path / "with"), _log(tmp_path / "without")
    assert [r["train_loss"] for r in with_val] == [r["train_loss"] for r in without]
    assert with_val[0]["val_loss"] > 0 and "val_loss" not in without[0]


def test_match_column_runs_and_is_checked(synth, tmp_path):
    """pretrain.match_column (rows with equal values are not each other's negatives) trains, logs ITM's
    suspect-negative share, and names the table and column when the column is missing."""
    from polyfuse.errors import InputError
    torch.set_num_threads(1)
    cfg = tiny_config(train={"epochs": 1}, pretrain={"objectives": ["contrastive", "itm"], "match_column": "label"})
    summary = pretrain_run(cfg, synth["train"], tmp_path / "m", progress=False)
    assert 0.0 <= summary["log"][-1]["itm_suspect_negatives"] <= 1.0
    bad = cfg.merged({"pretrain": {"match_column": "digit"}})
    with pytest.raises(InputError, match="digit"):
        pretrain_run(bad, synth["train"], tmp_path / "n", progress=False)
