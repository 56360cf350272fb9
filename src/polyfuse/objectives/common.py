"""What the objectives share: their declared needs, one step's encoder outputs, and small helpers
(rows of a batch part, presence, a zero loss that keeps the graph)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..fusion.fused import Fused


@dataclass(frozen=True)
class Needs:
    """What an objective needs of the config and schema (checked by resolve_objectives)."""
    columns: int = 1                   # input columns the table must have
    modalities: tuple[str, ...] = ()   # at least one column of one of these
    own_encoder: bool = False          # ...read by Polyfuse's own encoder (its tokens/patches are the targets)
    fused_tokens: bool = False         # reads the fused token sequence: attention fusion


@dataclass
class Step:
    """One pretraining batch, encoded once."""
    inputs: dict                       # {column: collated part}
    clean: dict                        # model.encode_columns(inputs): {column: {"tokens", "mask", "modality"}}
    groups: torch.Tensor | None = None  # (B,) rows with equal ids match each other (pretrain.match_column)
    pairing: Any = None                # itm.Pairing: how the joint pass re-pairs rows (None: as they are)
    joint: Fused | None = None         # the one joint fused pass that itm, mlm and masked_patch read
    joint_inputs: dict | None = None   # the inputs of that pass: re-paired, before corruption
    masked: dict = field(default_factory=dict)   # {objective: what its corrupt() returned beside the parts}


def take(part: dict, idx: torch.Tensor) -> dict:
    """The rows idx of one column's batch part (every tensor is indexed along its first axis)."""
    return {k: v[idx] if torch.is_tensor(v) else v for k, v in part.items()}


def present(part: dict) -> torch.Tensor:
    """(B,) True on rows that have this column."""
    return part["present"] if "present" in part else part["mask"].any(1)


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A zero that is still attached to the graph, so backward works when nothing was scored."""
    return like.sum() * 0.0


def random_selection(real: torch.Tensor, ratio: float, generator=None) -> torch.Tensor:
    """(B, T) bool: about ratio of each row's real positions (at least one), chosen uniformly."""
    noise = torch.rand(real.shape, generator=generator, device=real.device)
    noise = noise.masked_fill(~real, 2.0)                         # padding sorts last, never chosen
    rank = noise.argsort(1).argsort(1)
    n_real = real.sum(1, keepdim=True)
    k = (n_real.float() * ratio).round().clamp_min(1).minimum(n_real.float())
    return (rank < k) & real


def same_group(groups: torch.Tensor | None, B: int, device) -> torch.Tensor:
    """(B, B) True where rows i != j are known matches (same match group): never each other's negatives."""
    if groups is None:
        return torch.zeros(B, B, dtype=torch.bool, device=device)
    same = groups[:, None] == groups[None, :]
    return same & ~torch.eye(B, dtype=torch.bool, device=device)
