"""An interrupted run continued with --resume ends exactly where an unbroken run ends."""
import json

import pytest
import torch
from safetensors.torch import load_file

import polyfuse.training.trainer as trainer
from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config


class Interrupt(Exception):
    pass


def _log(run):
    drop = {"elapsed_s", "samples_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "log.jsonl").read_text().splitlines()]


def test_resume_equals_unbroken_run(synth, tmp_path, monkeypatch):
    cfg = tiny_config(train={"epochs": 3}, model={"modality_dropout": 0.2, "dropout": 0.1})
    train_run(cfg, synth["train"], synth["val"], tmp_path / "a", progress=False)

    def stop_after_first(state):
        if state["epoch"] == 1:
            raise Interrupt
    monkeypatch.setattr(trainer, "after_epoch", stop_after_first)
    with pytest.raises(Interrupt):
        train_run(cfg, synth["train"], synth["val"], tmp_path / "b", progress=False)
    assert len(_log(tmp_path / "b")) == 1
    monkeypatch.undo()
    train_run(cfg, synth["train"], synth["val"], tmp_path / "b", resume=True, progress=False)

    assert _log(tmp_path / "a") == _log(tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_finished_run_folder_is_not_overwritten(synth, tmp_path):
    from polyfuse.errors import ConfigError
    cfg = tiny_config(train={"epochs": 1})
    train_run(cfg, synth["train"], None, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_run(cfg, synth["train"], None, tmp_path / "r", progress=False)


def test_checkpoint_swap_leaves_no_temporary_folder(synth, tmp_path):
    cfg = tiny_config(train={"epochs": 2})
    train_run(cfg, synth["train"], synth["val"], tmp_path / "r", progress=False)
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "model.safetensors", "labels.json", "schema.json", "log.jsonl", "metrics.json",
            "processors", "checkpoint"} <= names
    assert not [n for n in names if "tmp" in n or n.endswith(".old")]
    assert json.loads((tmp_path / "r" / "checkpoint" / "trainer.json").read_text())["epoch"] == 2


def test_early_stopping_breaks_score_ties_on_validation_loss():
    state = trainer.TrainState(best_score=0.9, best_val_loss=0.30)
    assert state.better({"score": 0.95, "val_loss": 0.9})          # higher score wins
    assert state.better({"score": 0.9, "val_loss": 0.25})          # same score, lower loss
    assert not state.better({"score": 0.9, "val_loss": 0.31})
    assert not state.better({"score": 0.85, "val_loss": 0.01})
    assert trainer.TrainState().better({"score": 0.1, "val_loss": 9.0})
