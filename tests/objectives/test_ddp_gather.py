import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_gather_across_two_processes(tmp_path):
    """Two gloo processes with uneven shards see the global batch, and each gets the gradient of the
    global loss for its own rows (what one process holding every row would compute)."""
    out = tmp_path / "result"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).with_name("ddp_gather_worker.py")), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads(Path(f"{out}.{rank}").read_text())
        assert r["gathered_ok"]
        assert r["loss"] == pytest.approx(r["ref_loss"], abs=1e-6)
        assert torch.allclose(torch.tensor(r["grad"]), torch.tensor(r["ref_grad"]), atol=1e-6)
