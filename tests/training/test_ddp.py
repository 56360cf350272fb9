"""The same train command under torchrun with 2 processes (DDP, gloo on CPU)."""
import json
import os
import subprocess
import sys

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_config


def test_two_process_ddp_training(synth, tmp_path):
    cfg = tiny_config(train={"epochs": 2})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = Path(__file__).with_name("ddp_train_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path / "cfg.yaml"), str(synth["train"]), str(synth["val"]), str(out)],
        capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in log] == [2, 2]
    # Each rank saw half the rows per epoch: steps per epoch are ceil(112 / 2 / 16) = 4.
    assert log[-1]["step"] == 8
    # DDP keeps the replicas identical: both ranks end with the same weights, the ones saved.
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    assert rank0.keys() == rank1.keys() == saved.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], saved[k]), k
    from polyfuse import load
    model = load(out)
    assert model.score(synth["test"]) >= 0.0
