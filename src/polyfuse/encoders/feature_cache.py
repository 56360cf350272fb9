"""On-disk cache of a frozen tower's output, one safetensors file per input.

    <cache_dir>/<encoder identity>/<key[:2]>/<key>.safetensors   {"features": (T, H) float32}

* The **encoder identity** hashes the tower's config and every weight and buffer, byte for byte,
  plus how Polyfuse reads its output. Another checkpoint, the same path re-saved after
  fine-tuning, or another dtype is another folder: never a stale hit.
* The **key** hashes the exact tensors the tower receives for one row (token ids, pixel values,
  waveform/spectrogram), so it covers both the content of the file or text and every
  preprocessing setting (tokenizer, max length, resize, normalisation, sampling rate). A changed
  file gives other tensors, hence another key: a miss, never the old features. Rows are keyed
  with XXH3-128, not sha256: every training step hashes its whole batch (a 224 px image is
  600 KB of floats): 35 ms a batch of 64 with sha256, about a tenth of a VQA step, 9 ms now. The
  cache guards against accidents (another file, another setting), not against someone crafting
  inputs to collide with yours; the identity, hashed once per run, stays sha256.
* Each file also records its identity and key in its metadata and is checked on read; a file
  that is unreadable or does not match is a miss and is rewritten. Files are written under a
  temporary name and renamed into place, so a crash or two processes writing the same entry
  never leave a half-written file.

Entries read or computed in this process are also kept in memory (up to `memory_bytes`), so
later epochs do not even touch the disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "polyfuse-feature-cache-2"     # 2: XXH3-128 row keys


def tensor_digest(h, t: torch.Tensor):
    """Feed a tensor's dtype, shape and raw bytes into a hashlib object."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))      # the bytes in place, no copy


def row_key(tensors: list[torch.Tensor]) -> str:
    h = xxhash.xxh3_128()
    for t in tensors:
        tensor_digest(h, t)
    return h.hexdigest()


def module_identity(module: torch.nn.Module, extra: dict) -> str:
    """sha256 of a module's config (when it has one), `extra`, and all its weights and buffers."""
    h = hashlib.sha256(FORMAT.encode())
    config = getattr(module, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        tensor_digest(h, t)
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path, identity: str, memory_bytes: int = 2 << 30):
        self.identity = identity
        self.folder = Path(root).expanduser() / identity[:32]
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.memory_bytes, self.used = memory_bytes, 0
        self.hits = self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        x = self.memory.get(key)
        if x is None:
            x = self._read(key)
            if x is not None:
                self._remember(key, x)
        if x is None:
            self.misses += 1
        else:
            self.hits += 1
        return x

    def put(self, key: str, features: torch.Tensor):
        features = features.detach().float().cpu().contiguous()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"features": features}, str(tmp),
                  metadata={"format": FORMAT, "identity": self.identity, "key": key})
        os.replace(tmp, path)
        self._remember(key, features)

    def _read(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("identity") != self.identity or meta.get("key") != key:
                    return None
                return f.get_tensor("features")
        except Exception:      # a truncated or foreign file is a miss; put() rewrites it
            return None

    def _remember(self, key: str, x: torch.Tensor):
        size = x.numel() * x.element_size()
        if key in self.memory or size > self.memory_bytes:
            return
        self.memory[key] = x
        self.used += size
        while self.used > self.memory_bytes:
            _, old = self.memory.popitem(last=False)
            self.used -= old.numel() * old.element_size()


def cache_info(root: str | Path) -> dict:
    """What a feature cache folder holds: {"folder", "entries", "bytes", "encoders": {identity folder:
    {"entries", "bytes"}}}. Each frozen tower (weights, config, output) has a folder of its own, so
    a tower fine-tuned since, or a cache format that changed, leaves a folder nothing reads any more."""
    folder = Path(root).expanduser()
    encoders = {}
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = list(sub.glob("*/*.safetensors"))
            encoders[sub.name] = {"entries": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return {"folder": str(folder), "entries": sum(e["entries"] for e in encoders.values()),
            "bytes": sum(e["bytes"] for e in encoders.values()), "encoders": encoders}


def clear_cache(root: str | Path) -> int:
    """Delete every cached feature under root (each tower's folder); the bytes freed."""
    import shutil
    info = cache_info(root)
    for name in info["encoders"]:
        shutil.rmtree(Path(info["folder"]) / name)
    return info["bytes"]
