"""The optimizer's groups: weight decay by parameter kind, learning rate by module (trainer.param_groups)."""
from __future__ import annotations

import torch
from torch import nn

from polyfuse.training.trainer import param_groups


def groups_of(model, scales=None):
    out = {}
    for g in param_groups(model, 0.05, 1e-3, scales):
        for p in g["params"]:
            out[id(p)] = (g["lr"], g["weight_decay"])
    return out


def test_a_scaled_module_learns_at_its_share_and_keeps_its_weight_decay_rules():
    new, pretrained = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model = nn.Sequential(new, pretrained)
    got = groups_of(model, {pretrained: 0.1})
    assert got[id(new.weight)] == (1e-3, 0.05) and got[id(new.bias)] == (1e-3, 0.0)
    assert got[id(pretrained[0].weight)] == (1e-4, 0.05) and got[id(pretrained[1].weight)] == (1e-4, 0.0)
    assert len(got) == len(list(model.parameters()))
    # Without scales: the two groups as before (decay first), every parameter at the one rate.
    plain = param_groups(model, 0.05, 1e-3)
    assert [g["weight_decay"] for g in plain] == [0.05, 0.0] and {g["lr"] for g in plain} == {1e-3}


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert set(groups_of(model)) == {id(p) for p in model[1].parameters()}
    torch.optim.AdamW(param_groups(model, 0.05, 1e-3))        # a valid optimizer
