"""Run by test_ddp_gather.py under `torchrun --nproc_per_node 2` (gloo, CPU): checks gather_with_grad and
the global InfoNCE on uneven shards, writes one JSON line per rank to argv[1]."""
import json
import sys

import torch
from torch import distributed as dist

from polyfuse.objectives.contrastive import gather_with_grad, info_nce

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
za_all = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)      # the same on every rank
zb_all = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
lo, hi = (0, 3) if rank == 0 else (3, 5)                                # uneven shards: 3 and 2 rows
za = za_all[lo:hi].clone().requires_grad_(True)
zb = zb_all[lo:hi].clone().requires_grad_(True)
ga, gb = gather_with_grad(za), gather_with_grad(zb)
loss = info_nce(ga, gb, 3.0)
loss.backward()
# Reference: one process holding the whole batch; DDP sums the shards' gradients across ranks.
ra, rb = za_all.clone().requires_grad_(True), zb_all.clone().requires_grad_(True)
info_nce(ra, rb, 3.0).backward()
with open(sys.argv[1] + f".{rank}", "w") as f:
    f.write(json.dumps({"rank": rank, "gathered_ok": torch.allclose(ga, za_all) and torch.allclose(gb, zb_all),
                        "loss": float(loss.detach()), "ref_loss": float(info_nce(za_all, zb_all, 3.0)),
                        "grad": za.grad.tolist(), "ref_grad": ra.grad[lo:hi].tolist()}))
dist.destroy_process_group()
