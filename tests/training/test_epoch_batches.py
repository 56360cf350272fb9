"""How one epoch's rows are shared among torchrun ranks (Trainer's epoch_batches)."""
from collections import Counter

import pytest

from polyfuse.training.trainer import epoch_batches


@pytest.mark.parametrize("n,world,batch", [(100, 2, 8), (101, 2, 8), (103, 4, 5), (7, 3, 4), (64, 1, 16)])
def test_every_row_is_seen_once_per_epoch_and_ranks_take_equal_steps(n, world, batch):
    per_rank = [epoch_batches(n, batch, seed=3, epoch=2, rank=r, world=world) for r in range(world)]
    # Every rank takes the same number of steps (DDP needs it) with the same batch sizes.
    assert len({len(b) for b in per_rank}) == 1
    assert len({tuple(len(x) for x in b) for b in per_rank}) == 1
    seen = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(seen) == set(range(n))                    # each row at least once
    repeats = sum(c - 1 for c in seen.values())
    assert repeats == (-n) % world                       # only the padding to a multiple of world repeats
    assert all(c <= 2 for c in seen.values())


def test_each_epoch_has_its_own_order_and_the_same_order_on_a_rerun():
    a = epoch_batches(50, 8, seed=1, epoch=0, rank=0, world=1)
    assert a == epoch_batches(50, 8, seed=1, epoch=0, rank=0, world=1)
    assert a != epoch_batches(50, 8, seed=1, epoch=1, rank=0, world=1)
    assert a != epoch_batches(50, 8, seed=2, epoch=0, rank=0, world=1)
