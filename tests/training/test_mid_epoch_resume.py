"""A run killed mid-epoch (the process gone, no clean-up) continues with --resume from its last
mid-epoch checkpoint (train.checkpoint_every) and ends with exactly the weights of an unbroken run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import polyfuse
from polyfuse.config import Config
from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config

# Dropout, modality dropout and augmentation all draw from the RNG the checkpoint must carry.
# The weight average (train.ema_epochs) too: a checkpoint keeps it beside the live weights.
SECTIONS = {"train": {"epochs": 2, "checkpoint_every": 3, "ema_epochs": 1.0}, "model": {"modality_dropout": 0.2, "dropout": 0.1},
            "augment": {"enabled": True}}
KILL_AT = (1, 4)    # (epoch, batch): killed after the second epoch's 4th batch (7 per epoch), 2 past the checkpoint

# The child trains like `polyfuse train` and dies (os._exit: no finally blocks, no flushing, as with
# kill -9) right after the step KILL_AT, a few steps past its last mid-epoch checkpoint.
CHILD = """
import json, os, sys
import polyfuse.training.trainer as trainer
from polyfuse.config import Config
from polyfuse.recipes.train import train_run

def die(state):
    if (state["epoch"], state["batch"]) == tuple(json.loads(sys.argv[2])):
        os._exit(9)

trainer.after_step = die
train_run(Config.from_dict(json.loads(sys.argv[1])), *sys.argv[3:], progress=False)
"""


def _log(run: Path) -> list[dict]:
    drop = {"elapsed_s", "samples_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in (run / "log.jsonl").read_text().splitlines()]


def test_killed_mid_epoch_resumes_to_the_unbroken_weights(synth, tmp_path):
    cfg = tiny_config(**SECTIONS)
    train_run(cfg, synth["train"], synth["val"], tmp_path / "a", progress=False)

    # Same thread count in the child: a different one could change float sums' order.
    src = str(Path(polyfuse.__file__).resolve().parent.parent)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, root]), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), json.dumps(KILL_AT),
                            str(synth["train"]), str(synth["val"]), str(tmp_path / "b")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 9, child.stderr[-3000:]
    saved = json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())
    # The last checkpoint is mid-epoch, in the epoch killed, before the batch it died after.
    assert saved["epoch"] == KILL_AT[0] and 0 < saved["batch"] < KILL_AT[1], saved
    assert len(_log(tmp_path / "b")) == KILL_AT[0]

    train_run(Config.from_dict(cfg.to_dict()), synth["train"], synth["val"], tmp_path / "b", resume=True,
              progress=False)
    assert _log(tmp_path / "a") == _log(tmp_path / "b")
    for name in ("model.safetensors", "checkpoint/model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # The finished run's checkpoint is an end-of-epoch one again.
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())["batch"] == 0


def test_checkpoint_every_flag_sets_the_config():
    from polyfuse.cli.main import build_parser
    from polyfuse.cli.train import config_from_args
    from polyfuse.errors import ConfigError
    args = build_parser().parse_args(["train", "--train", "t.csv", "--label", "y", "--checkpoint-every", "500",
                                      "--out", "r"])
    assert config_from_args(args)[0].train.checkpoint_every == 500
    with pytest.raises(ConfigError, match="checkpoint_every"):
        tiny_config(train={"checkpoint_every": 0})
