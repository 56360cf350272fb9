"""Batches made by DataLoader workers train exactly as batches made in the training process."""
from safetensors.torch import load_file
import torch

from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_two_workers_and_no_cache_train_the_same_weights_as_none(synth, tmp_path):
    """Augmented, so the RNG must stay in the training process; --no-cache decodes every epoch."""
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
