"""Pretrained Hugging Face towers as Polyfuse encoders, and the choice of encoder per modality.

A tower is any `AutoModel` (BERT/MiniLM, ViT/ConvNeXt, wav2vec2/Whisper encoder/AST) whose last
hidden states are projected by a Linear to d_model:

    forward(part) -> {"tokens": (B, T, D), "mask": (B, T), "features": (B, T, H)}
                     (tokens and mask as scratch encoders give them; features: the tower's own states)

Adaptation (model.*): freeze_encoders fixes the tower (only the projection trains), unfreeze_top_k
trains its top k layers again, lora adds peft LoRA adapters to a frozen tower. A fully frozen
tower runs in eval mode without gradients, and with model.feature_cache its output per input
is computed once and kept on disk (encoders/feature_cache.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import Config, is_network
from ..data.loader import BatchStream, in_order, worker_count
from ..data.network import load_network
from ..data.pretrained import CLIP_LENGTH, TowerSource
from ..errors import ConfigError
from ..fusion.dropout import Dropout
from ..fusion.transformer import init_weights, masked_mean
from .base import Encoder
from .feature_cache import FeatureCache, module_identity, row_key
from .whisper import conv_out, whisper_features

# model_type -> (path of the tower's layer list, modules after it that belong to the top layer).
# Explicit on purpose: unfreezing "the top k layers" must mean the same thing every time.
LAYERS = {
    "bert": ("encoder.layer", ()), "roberta": ("encoder.layer", ()), "xlm-roberta": ("encoder.layer", ()),
    "electra": ("encoder.layer", ()), "distilbert": ("transformer.layer", ()),
    "vit": ("encoder.layer", ("layernorm",)), "deit": ("encoder.layer", ("layernorm",)),
    "dinov2": ("encoder.layer", ("layernorm",)), "convnext": ("encoder.stages", ()),
    "audio-spectrogram-transformer": ("encoder.layer", ("layernorm",)),
    "wav2vec2": ("encoder.layers", ()), "hubert": ("encoder.layers", ()),
    "whisper": ("layers", ("layer_norm",)),          # the encoder half of WhisperModel
}
# model_type -> LoRA target modules (attention query/value projections); others: every Linear.
LORA_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "vit": ["query", "value"], "deit": ["query", "value"],
    "dinov2": ["query", "value"], "audio-spectrogram-transformer": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"], "wav2vec2": ["q_proj", "v_proj"], "hubert": ["q_proj", "v_proj"],
    "whisper": ["q_proj", "v_proj"],
}


def load_tower(source: TowerSource, modality: str) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    try:
        if source.with_weights:
            model = AutoModel.from_pretrained(source.path, dtype=torch.float32)
        else:   # reloading a run: architecture from processors/<m>_tower, weights from model.safetensors
            model = AutoModel.from_config(AutoConfig.from_pretrained(source.path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{modality}.encoder {source.path!r}: cannot load the model (a Hugging Face model "
                          f"folder, or a hub id already in the local cache): {str(e).splitlines()[0]}") from None
    # Encoder-decoder checkpoints (Whisper): only the encoder reads the input.
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


def _submodule(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


class TowerEncoder(Encoder):
    def __init__(self, cfg: Config, modality: str, source: TowerSource):
        super().__init__()
        mc = cfg.model
        self.modality = modality
        if is_network(source.path):       # any PyTorch network (data/network.py)
            net = load_network(source.path, source.with_weights)
            self.tower, self.model_type, width, self.hf = net.network, None, net.width, False
            self.layers = (net.layers, net.after) if net.layers else None
        else:
            self.tower, self.hf = load_tower(source, modality), True
            self.model_type = self.tower.config.model_type
            width = getattr(self.tower.config, "hidden_size", None) or self.tower.config.hidden_sizes[-1]
            self.layers = LAYERS.get(self.model_type)
        self.proj = nn.Linear(width, mc.d_model)
        self.drop = Dropout(mc.dropout)
        self.token_drop = mc.tower_token_drop
        self.fully_frozen = mc.towers_fully_frozen
        if mc.freeze_encoders or mc.lora:
            self.tower.requires_grad_(False)
        if mc.unfreeze_top_k:
            self._unfreeze_top(mc.unfreeze_top_k)
        if mc.lora:
            self._add_lora(mc.lora_rank, mc.lora_alpha)
        self.cache_dir = Path(mc.feature_cache_dir).expanduser() if self.fully_frozen and mc.feature_cache else None
        self._cache: FeatureCache | None = None

    # -- adaptation ------------------------------------------------------------------
    def _unfreeze_top(self, k: int):
        if self.layers is None:
            what = f"model type {self.model_type!r} (known: {', '.join(sorted(LAYERS))})" if self.hf else \
                "this network (its factory's NetworkTower sets no `layers`)"
            raise ConfigError(f"model.unfreeze_top_k: no known layer list for {what}; "
                              "use model.lora or freeze_encoders alone")
        path, after = self.layers
        layers = _submodule(self.tower, path)
        if k > len(layers):
            raise ConfigError(f"model.unfreeze_top_k is {k} but the {self.modality} tower has {len(layers)} layers")
        for layer in list(layers)[-k:]:
            layer.requires_grad_(True)
        for name in after:
            _submodule(self.tower, name).requires_grad_(True)

    def _add_lora(self, rank: int, alpha: float):
        from peft import LoraConfig, inject_adapter_in_model
        targets = LORA_TARGETS.get(self.model_type, "all-linear")
        self.tower = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets),
                                             self.tower)
        for name, p in self.tower.named_parameters():
            p.requires_grad_("lora_" in name)

    def init_weights(self):
        """Only the projection is new; the tower keeps its pretrained weights (LoRA B stays zero)."""
        init_weights(self.proj)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.fully_frozen:       # no dropout in a frozen tower: its output is a fixed feature
            self.tower.eval()
        return self

    @property
    def feature_width(self) -> int:
        return self.proj.in_features

    def pooled_features(self, part: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the tower's output vectors (its own pooling, no trained projection), (B, H), (B,)."""
        h, mask = self.features(part)
        return masked_mean(h, mask), mask.any(1)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None          # new weights, new identity
        return super()._load_from_state_dict(*args, **kwargs)

    # -- forward -----------------------------------------------------------------------
    def forward(self, part: dict) -> dict:
        h, mask = self.features(part)                              # (B, T, H), (B, T)
        if self.training and self.token_drop > 0:
            mask = drop_tokens(mask, self.token_drop)
        # features: the tower's own output, for a reader that was trained on it (an encoder-decoder
        # generation decoder reading its own encoder's states, generation/model.py).
        return {"tokens": self.drop(self.proj(h)), "mask": mask, "features": h}

    def features(self, part: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's last hidden states for present rows (zeros and an all-False mask elsewhere)."""
        present = part["present"]
        idx = present.nonzero().flatten().tolist()
        if self.cache_dir is not None:
            rows = self._cached_rows(part, idx)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fully_frozen):
                rows = self._run(part, idx) if idx else []
        return _scatter(rows, idx, len(present), self.proj.in_features, self.proj.weight)

    def _row_inputs(self, part: dict, i: int) -> list[torch.Tensor]:
        """Exactly what the tower sees for row i, without padding: the cache key's content."""
        if self.modality == "text":
            return [part["ids"][i][part["mask"][i]]]
        if self.modality == "image":
            return [part["pixels"][i]]
        values = [part["values"][i][..., : int(part["lengths"][i])]]
        # Whisper: the clip's own length too (a clip that ends in digital silence pads to the same values)
        return values + [part["frames"][i : i + 1]] if self.model_type in CLIP_LENGTH else values

    def _cached_rows(self, part: dict, idx: list[int]) -> list[torch.Tensor]:
        if self._cache is None:
            self._cache = FeatureCache(self.cache_dir, module_identity(
                self.tower, {"modality": self.modality, "output": "last_hidden_state"}))
        keys = [row_key(self._row_inputs(part, i)) for i in idx]
        rows = [self._cache.get(k) for k in keys]
        # One run per distinct input: rows that share a file (several questions about one image)
        # sit in one batch and would otherwise each pay for the tower.
        first = {}
        for j, r in enumerate(rows):
            if r is None:
                first.setdefault(keys[j], j)
        if first:
            with torch.no_grad():
                computed = dict(zip(first, self._run(part, [idx[j] for j in first.values()])))
            for k, feats in computed.items():
                self._cache.put(k, feats)
            rows = [computed[k] if r is None else r for k, r in zip(keys, rows)]
        device = self.proj.weight.device
        return [r.to(device) for r in rows]

    def _run(self, part: dict, idx: list[int]) -> list[torch.Tensor]:
        """The tower on rows idx; one (T_i, H) tensor per row, padding removed."""
        if self.modality == "text":
            mask = part["mask"][idx]
            T = int(mask.sum(1).max())
            mask = mask[:, :T]
            h = self.tower(input_ids=part["ids"][idx][:, :T], attention_mask=mask.long()).last_hidden_state
            return [h[j, mask[j]] for j in range(len(idx))]
        if self.modality == "image":
            pixels = part["pixels"][idx]
            h = self.tower(pixel_values=pixels).last_hidden_state if self.hf else self.tower(pixels)
            if h.ndim == 4:                                        # conv nets: (b, C, h, w) -> (b, h*w, C)
                h = h.flatten(2).transpose(1, 2)
            elif h.ndim == 2:                                      # one vector per image: one token
                h = h[:, None]
            return list(h)
        return self._run_audio(part, idx)

    def _run_audio(self, part: dict, idx: list[int]) -> list[torch.Tensor]:
        name = self.tower.main_input_name
        lengths = part["lengths"][idx]
        L = int(lengths.max())
        if self.model_type in CLIP_LENGTH:
            # Whisper: each clip and the silence after it (audio.tower_min_seconds), not 30 s; the
            # output keeps the clip's own positions.
            h, n = whisper_features(self.tower, part["values"][idx][..., :L], lengths)
            keep = torch.minimum(conv_out(part["frames"][idx]), n)
            return [h[j, : int(keep[j])] for j in range(len(idx))]
        if "attention_mask" in part or bool((lengths == L).all()):
            kwargs = {name: part["values"][idx][..., :L]}
            if "attention_mask" in part:
                kwargs["attention_mask"] = part["attention_mask"][idx][:, :L]
            h = self.tower(**kwargs).last_hidden_state
            return [h[j, : self._out_length(int(lengths[j]), h.shape[1])] for j in range(len(idx))]
        # Extractors without an attention mask (wav2vec2-base style) see padding as signal:
        # run each row alone so that a row's features never depend on its batch.
        out = []
        for j, i in enumerate(idx):
            x = part["values"][i : i + 1][..., : int(lengths[j])]
            out.append(self.tower(**{name: x}).last_hidden_state[0])
        return out

    def _out_length(self, n_in: int, n_out: int) -> int:
        fn = getattr(self.tower, "_get_feat_extract_output_lengths", None)
        if fn is None:                   # fixed-length inputs (Whisper, AST): every frame is real
            return n_out
        return min(n_out, int(fn(torch.tensor(n_in))))


def fill_feature_caches(model: nn.Module, sets: list[tuple[int, Callable[[list[int]], dict]]], batch_size: int,
                        data_cfg, say) -> None:
    """Every row's output of each cached frozen tower, computed before the first step (sets: (rows,
    batch(indices)) pairs: training and validation). Filled lazily in the first epoch instead, the
    towers' cost made that epoch 20x slower than the next ones, and the time budget, which plans
    the epochs from the first steps and the first epoch, planned 2 epochs of 10 minutes where 21
    fit (spoken digit sequences with Whisper tiny.en). Nothing to do without a cached tower."""
    towers = {m.modality: m for m in model.modules() if isinstance(m, TowerEncoder) and m.cache_dir is not None}
    if not towers:
        return
    t0, rows, was_training = time.perf_counter(), 0, model.training
    model.eval()             # a frozen tower always runs in eval mode (its BatchNorm statistics stay as loaded)
    with torch.no_grad():
        for n, batch in sets:
            for made in BatchStream(batch, worker_count(data_cfg, n), data_cfg.prefetch)(in_order(n, batch_size)):
                for part in made["inputs"].values():
                    if part["modality"] in towers:
                        towers[part["modality"]].features(part)
            rows += n
    model.train(was_training)
    say(f"feature cache: {', '.join(sorted(towers))} tower output of {rows} rows ready in {time.perf_counter() - t0:.0f} s")


def drop_tokens(mask: torch.Tensor, share: float) -> torch.Tensor:
    """(B, T) mask with about `share` of each row's real tokens turned off, never its last one: the
    kept tokens are the real ones with the highest random scores (the global RNG, so a resumed run
    drops what an unbroken one would)."""
    n = mask.sum(1, keepdim=True)                                            # (B, 1)
    keep = torch.clamp(torch.round(n * (1 - share)), min=1)
    score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    rank = score.argsort(1, descending=True).argsort(1)                      # 0 = highest score
    return mask & (rank < keep)


def _scatter(rows: list[torch.Tensor], idx: list[int], B: int, width: int, like: torch.Tensor):
    """Per-row (T_i, H) features -> (B, T, H) zero-padded and a (B, T) mask; absent rows all-False."""
    T = max((r.shape[0] for r in rows), default=1)
    if len(rows) == B and all(r.shape[0] == T for r in rows):
        # Every row present at one length (an image tower's grid): nothing to pad. Zeroing the
        # (B, T, H) buffer and copying row by row was 5% of a VQA training step (49 x 1280 features).
        return torch.stack(rows).to(like.dtype), torch.ones(B, T, dtype=torch.bool, device=like.device)
    h = torch.zeros(B, T, width, dtype=like.dtype, device=like.device)
    mask = torch.zeros(B, T, dtype=torch.bool, device=like.device)
    for r, i in zip(rows, idx):
        h[i, : r.shape[0]] = r.to(like.dtype)
        mask[i, : r.shape[0]] = True
    return h, mask
