"""Batches made by DataLoader workers train exactly as batches made in the training process."""
import os

import pytest
from safetensors.torch import load_file
import torch

from polyfuse.data.loader import threads_beside

from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_two_workers_and_no_cache_train_the_same_weights_as_none(synth, tmp_path, monkeypatch):
    """Augmented, so the RNG must stay in the training process; --no-cache decodes every epoch.
    OMP_NUM_THREADS keeps torch's threads as they are with workers too (threads_beside): another
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


def test_training_beside_workers_uses_the_cores_they_leave(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores, before = len(os.sched_getaffinity(0)), torch.get_num_threads()
    with threads_beside(1):
        assert torch.get_num_threads() == min(before, max(1, cores - 1))
    assert torch.get_num_threads() == before
    with threads_beside(0):                       # no workers: torch's own choice
        assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")    # the user's (or torchrun's) choice stands
    with threads_beside(cores):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):             # restored on the way out of a failed run too
        with threads_beside(1):
            raise RuntimeError
    assert torch.get_num_threads() == before
