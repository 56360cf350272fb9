"""The model as one function of flat tensors: the graph both serving backends (eager and ONNX) run.

Every input column is always present (an absent cell has an all-False mask, a column absent from
every row of a batch is all-False), so the graph has one fixed signature. That is equivalent to the
training-time convention of leaving such a column out: masked keys get no attention weight.

Which tensors a column contributes is its processor's `fields` (what its encoder reads): ids/mask
for text, pixels/present for images, mel/mask for scratch audio, values/lengths/present for an
audio tower, so a run with any encoder serves through the same graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.processors import Processors
from ..model import PolyfuseModel


def fields_of(processors: Processors) -> dict[str, tuple[str, ...]]:
    """{modality: the tensors its processor collates that its encoder reads}."""
    return {m: p.fields for m, p in processors.by_modality.items()}


def input_parts(streams: list[tuple[str, str]], fields: dict) -> list[tuple[str, str, str]]:
    """(column, modality, field) in the order the graph takes its tensors."""
    return [(col, m, f) for col, m in streams for f in fields[m]]


def input_names(streams: list[tuple[str, str]], fields: dict) -> list[str]:
    return [f"{col}.{f}" for col, _, f in input_parts(streams, fields)]


def output_names(streams: list[tuple[str, str]]) -> list[str]:
    return ["probabilities", "pooled"] + [f"{col}.pooled" for col, _ in streams]


class FlatModel(nn.Module):
    """forward(*tensors in input_names order) -> (head outputs (B, K), pooled (B, D), per-column pooled (B, D)...).

    The head outputs are TaskHead.probabilities (a regression head's standardised value);
    LabelCodec.predictions turns them into label units, as on every other prediction path.
    """

    def __init__(self, model: PolyfuseModel, fields: dict):
        super().__init__()
        self.model = model
        self.streams = model.schema.streams()
        self.parts = input_parts(self.streams, fields)

    def forward(self, *flat: torch.Tensor):
        inputs = {}
        for (col, m, f), t in zip(self.parts, flat):
            inputs.setdefault(col, {"modality": m})[f] = t
        out = self.model({"inputs": inputs})
        probs = self.model.head.probabilities(out["logits"])
        return (probs, out["pooled"]) + tuple(out["per_column"][c] for c, _ in self.streams)


def flatten(inputs: dict, streams: list[tuple[str, str]], fields: dict) -> list[torch.Tensor]:
    """Collated {column: part} (every column present) -> tensors in input_names order."""
    return [inputs[col][f] for col, _, f in input_parts(streams, fields)]
