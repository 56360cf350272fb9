"""Small helpers every layer uses: atomic file writes and moving nested batches to a device.

They live here, below every package, so that no layer has to import another for them
(training/ used to own them, which made inference and retrieval import the trainer).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def atomic_write_text(path: Path, text: str):
    """Write to a temporary name, then rename: a crash never leaves a half-written file under `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def atomic_save_tensors(path: Path, tensors: dict, metadata: dict | None = None):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def to_device(batch, device):
    """A nested dict of tensors (and other values, left alone) on `device`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def state_dict_cpu(model: torch.nn.Module) -> dict:
    """A detached CPU copy of a module's weights (a best-so-far snapshot that training cannot change)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
