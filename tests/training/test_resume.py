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


@pytest.mark.parametrize("ema_epochs", [0.0, 1.0])
def test_resume_equals_unbroken_run(synth, tmp_path, monkeypatch, ema_epochs):
    cfg = tiny_config(train={"epochs": 3, "ema_epochs": ema_epochs}, model={"modality_dropout": 0.2, "dropout": 0.1})
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


def test_a_score_within_its_noise_of_the_top_is_ranked_by_validation_loss():
    """600 validation rows: one row (0.0017) is noise, a lucky epoch must not beat a lower loss."""
    from polyfuse.recipes.train import score_noise
    n = 600
    lucky = {"score": 1.0, "val_loss": 0.52, "score_noise": score_noise("classification", 1.0, n)}
    later = {"score": 599 / 600, "val_loss": 0.51, "score_noise": score_noise("classification", 599 / 600, n)}
    worse = {"score": 590 / 600, "val_loss": 0.40, "score_noise": score_noise("classification", 590 / 600, n)}
    state = trainer.TrainState(best_score=1.0, best_val_loss=0.52, top_score=1.0)
    assert state.better(later)                                     # one row down, lower loss: the better model
    assert not state.better(worse)                                 # ten rows down: not noise, whatever the loss
    assert not state.better({**later, "val_loss": 0.53})
    assert score_noise("regression", 0.7, n) == 0.0
    assert score_noise("classification", 0.5, 100) == pytest.approx(0.05)


def test_best_epoch_follows_the_noise_rule_through_a_run():
    """The anchor is the top score seen: a chain of small drops cannot walk the choice downhill."""
    from polyfuse.recipes.train import score_noise
    state = trainer.TrainState()
    chosen = []
    for epoch, (acc, loss) in enumerate([(0.95, 0.9), (1.0, 0.6), (599 / 600, 0.5), (598 / 600, 0.45), (599 / 600, 0.55)], 1):
        r = {"score": acc, "val_loss": loss, "score_noise": score_noise("classification", acc, 600)}
        if state.better(r):
            state.best_score, state.best_val_loss, state.best_epoch = acc, loss, epoch
        state.top_score = max(acc, state.top_score if state.top_score is not None else -1)
        chosen.append(state.best_epoch)
    assert chosen == [1, 2, 3, 3, 3]


@pytest.mark.parametrize("aside", ["checkpoint.tmp", "checkpoint.old"])
def test_a_kill_between_the_checkpoint_renames_keeps_a_whole_checkpoint(synth, tmp_path, aside):
    """save_checkpoint moves the old folder aside, then the new one in: killed in between, the
    folder aside (the new one if whole, else the old) is the checkpoint."""
    from polyfuse.runfolder import RunFolder
    cfg = tiny_config(train={"epochs": 1})
    train_run(cfg, synth["train"], None, tmp_path / "r", progress=False)
    (tmp_path / "r" / "checkpoint").rename(tmp_path / "r" / aside)
    saved = RunFolder(tmp_path / "r").load_checkpoint()
    assert saved is not None and saved["trainer"]["epoch"] == 1
    assert not (tmp_path / "r" / aside).exists()
