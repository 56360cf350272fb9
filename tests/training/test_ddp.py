"""The same train command under torchrun with 2 processes (DDP, gloo on CPU)."""
import json
import os
import subprocess
import sys

import yaml

from tests.conftest import tiny_config


def test_two_process_ddp_training(synth, tmp_path):
    cfg = tiny_config(train={"epochs": 2})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "polyfuse.cli", "train", "--config", str(tmp_path / "cfg.yaml"), "--train", str(synth["train"]),
         "--val", str(synth["val"]), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in log] == [2, 2]
    # Each rank saw half the rows per epoch: steps per epoch are ceil(112 / 2 / 16) = 4.
    assert log[-1]["step"] == 8
    from polyfuse import load
    model = load(out)
    assert model.score(synth["test"]) >= 0.0
