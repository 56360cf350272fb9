"""Small helpers the objectives share: rows of a batch part, presence, a zero loss that keeps the graph."""
from __future__ import annotations

import torch

from ..errors import ConfigError


def take(part: dict, idx: torch.Tensor) -> dict:
    """The rows idx of one column's batch part (every tensor is indexed along its first axis)."""
    return {k: v[idx] if torch.is_tensor(v) else v for k, v in part.items()}


def present(part: dict) -> torch.Tensor:
    """(B,) True on rows that have this column."""
    return part["present"] if "present" in part else part["mask"].any(1)


def zero_loss(like: torch.Tensor) -> torch.Tensor:
    """A zero that is still attached to the graph, so backward works when nothing was scored."""
    return like.sum() * 0.0


def need_tokens(fused: dict, name: str):
    if "tokens" not in fused:
        raise ConfigError(f"the {name} objective reads the fused token sequence: use --fusion attention")


def random_selection(real: torch.Tensor, ratio: float, generator=None) -> torch.Tensor:
    """(B, T) bool: about ratio of each row's real positions (at least one), chosen uniformly."""
    noise = torch.rand(real.shape, generator=generator, device=real.device)
    noise = noise.masked_fill(~real, 2.0)                         # padding sorts last, never chosen
    rank = noise.argsort(1).argsort(1)
    n_real = real.sum(1, keepdim=True)
    k = (n_real.float() * ratio).round().clamp_min(1).minimum(n_real.float())
    return (rank < k) & real
