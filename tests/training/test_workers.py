"""Batches made by DataLoader workers train exactly as batches made in the training process."""
import os
import time

import pytest
from safetensors.torch import load_file
import torch

from polyfuse.data.loader import ThreadTuner, thread_options

from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_two_workers_and_no_cache_train_the_same_weights_as_none(synth, tmp_path, monkeypatch):
    """Augmented, so the RNG must stay in the training process; --no-cache decodes every epoch.
    OMP_NUM_THREADS keeps torch's threads as they are with workers too (ThreadTuner): another
    thread count sums in another order, and the weights would differ in their last bits."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    runs = {}
    for name, data in {"serial": {"workers": 0}, "parallel": {"workers": 2},
                       "uncached": {"workers": 2, "cache": False}}.items():
        cfg = tiny_config(train={"epochs": 2}, augment={"enabled": True}, data=data)
        train_run(cfg, synth["train"], synth["val"], tmp_path / name, progress=False)
        runs[name] = _weights(tmp_path / name)
    for name in ("parallel", "uncached"):
        assert runs[name].keys() == runs["serial"].keys()
        for k in runs["serial"]:
            assert torch.equal(runs[name][k], runs["serial"][k]), (name, k)


def test_the_tuner_times_both_thread_counts_and_keeps_the_faster(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    used = []
    monkeypatch.setattr(torch, "set_num_threads", used.append)
    assert thread_options(0) == [] and thread_options(1) == [3, 4] and thread_options(4) == [1, 4]
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    tuner = ThreadTuner(workers=1, chosen=None, steps=3)
    cost = {3: 1.0, 4: 2.0}                   # a step takes 1 s on 3 threads, 2 s on 4
    chosen = []
    for step in range(1, 10):
        tuner.before_step(step)
        clock[0] += cost[used[-1]] if step > 1 else 5.0          # step 1 pays one-off costs, untimed
        if (c := tuner.after_step(step)) is not None:
            chosen.append((step, c))
    assert used[:8] == [4, 3, 3, 3, 4, 4, 4, 3]    # default, 3 steps on 3 threads, 3 on 4, then the choice
    assert chosen == [(7, 3)] and used[-1] == 3     # decided once, after step 1 + 2 x 3
    tuner.close()
    assert used[-1] == 4
    # A resumed run keeps its earlier choice and times nothing.
    used.clear()
    resumed = ThreadTuner(workers=1, chosen=None, steps=3)
    resumed.use(3)
    for step in range(5, 9):
        resumed.before_step(step)
        assert resumed.after_step(step) is None
    assert set(used) <= {3, 4} and used[-1] == 3
    # OMP_NUM_THREADS set (torchrun sets it): nothing to choose, nothing changed.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_options(1) == []
