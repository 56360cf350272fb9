"""The model as one function of flat tensors: the graph both serving backends (eager and ONNX) run.

Every input column is always present (an absent cell has an all-False mask, a column absent from
every row of a batch is all-False), so the graph has one fixed signature. That is equivalent to the
training-time convention of leaving such a column out: masked keys get no attention weight.
"""
from __future__ import annotations

import torch
from torch import nn

from ..model import PolyfuseModel

# The tensors each modality's processor collates to, in the order the graph takes them.
PARTS = {"text": ("ids", "mask"), "image": ("pixels", "present"), "audio": ("mel", "mask")}


def input_names(streams: list[tuple[str, str]]) -> list[str]:
    return [f"{col}.{p}" for col, m in streams for p in PARTS[m]]


def output_names(streams: list[tuple[str, str]]) -> list[str]:
    return ["probabilities", "pooled"] + [f"{col}.pooled" for col, _ in streams]


class FlatModel(nn.Module):
    """forward(*tensors in input_names order) -> (probabilities (B, K), pooled (B, D), per-column pooled (B, D)...)."""

    def __init__(self, model: PolyfuseModel):
        super().__init__()
        self.model = model
        self.streams = model.schema.streams()

    def forward(self, *flat: torch.Tensor):
        inputs, i = {}, 0
        for col, m in self.streams:
            part = {"modality": m}
            for p in PARTS[m]:
                part[p] = flat[i]
                i += 1
            inputs[col] = part
        out = self.model({"inputs": inputs})
        probs = self.model.head.probabilities(out["logits"])
        return (probs, out["pooled"]) + tuple(out["per_column_pooled"][c] for c, _ in self.streams)


def flatten(inputs: dict, streams: list[tuple[str, str]]) -> list[torch.Tensor]:
    """Collated {column: part} (every column present) -> tensors in input_names order."""
    return [inputs[col][p] for col, m in streams for p in PARTS[m]]
