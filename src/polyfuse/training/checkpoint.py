"""The run folder on disk. Nothing is pickled: tensors go to safetensors, the rest to JSON.

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under a real name. `config.json` is renamed into place last: a folder without
it is not a finished model, and `load` says so.

The resumable training state lives in `checkpoint/`, written whole into `checkpoint.tmp/` and
swapped in with renames.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import PolyfuseError


def atomic_write_text(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: dict, metadata: dict | None = None):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def state_dict_cpu(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, path: Path):
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PolyfuseError(f"{path}: weights do not match the model (missing: {missing[:10]}, "
                            f"unexpected: {unexpected[:10]})")


# -- optimizer state without pickle ------------------------------------------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"state.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(run_dir: Path, model_state: dict, best_state: dict | None, opt, trainer: dict):
    final, tmp = run_dir / "checkpoint", run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_state, str(tmp / "model.safetensors"))
    if best_state is not None:
        save_file(best_state, str(tmp / "best.safetensors"))
    opt_tensors, opt_meta = optimizer_to_tensors(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))   # last: marks the folder complete
    old = run_dir / "checkpoint.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(run_dir: Path) -> dict | None:
    folder = run_dir / "checkpoint"
    if not (folder / "trainer.json").exists():
        return None
    best = folder / "best.safetensors"
    return {
        "model": load_file(str(folder / "model.safetensors")),
        "best": load_file(str(best)) if best.exists() else None,
        "optimizer": optimizer_from_tensors(load_file(str(folder / "optimizer.safetensors")),
                                            json.loads((folder / "optimizer.json").read_text())),
        "rng": load_file(str(folder / "rng.safetensors"))["torch"],
        "trainer": json.loads((folder / "trainer.json").read_text()),
    }
