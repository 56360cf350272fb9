"""Processors for pretrained Hugging Face towers, built from the checkpoint's own preprocessing config.

text  -> AutoTokenizer (special tokens added, as the tower was trained with them)
image -> AutoImageProcessor on the PIL backend (no torchvision needed)
audio -> AutoFeatureExtractor, after our own guarded decode and resampling to its sampling rate

Each saves its tokenizer / processor config *and the tower's model config* into
`processors/<modality>_tower/`, so a saved run rebuilds the tower's architecture from its own
folder (weights come from model.safetensors) with no hub access and no original path.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Config, is_network, is_tower
from ..errors import ConfigError, InputError
from .audio import AudioProcessor
from .image import ImageProcessor
from .network import NetworkImageProcessor
from .text import TextProcessor


@dataclasses.dataclass
class TowerSource:
    """Where a tower comes from: a checkpoint with weights (training) or just its config (reloading)."""
    path: str
    with_weights: bool


def tower_folder(folder: Path, modality: str) -> Path:
    return folder / f"{modality}_tower"


def _hf(kind: str, source: str, modality: str, **kwargs):
    """AutoTokenizer/AutoImageProcessor/AutoFeatureExtractor/AutoConfig.from_pretrained with a clear error."""
    import transformers
    try:
        return getattr(transformers, kind).from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{modality}.encoder {source!r}: cannot load its {kind[4:]} (a Hugging Face model "
                          f"folder, or a hub id already in the local cache; nothing is downloaded at run time): "
                          f"{str(e).splitlines()[0]}") from None


class _TowerProcessor:
    """Shared by the three: fitting learns nothing; saving writes the HF files and the model config."""
    modality = ""
    init_vectors = None

    def __init__(self, cfg: Config, hf, model_config, source: TowerSource):
        self.cfg, self.hf, self.model_config, self.source = cfg, hf, model_config, source

    @classmethod
    def create(cls, cfg: Config, source: TowerSource):
        path = source.path
        return cls(cfg, cls._load_hf(path), _hf("AutoConfig", path, cls.modality), source)

    @classmethod
    def _load_hf(cls, path: str):
        raise NotImplementedError

    def fit(self, values):
        return self

    def fingerprint(self) -> str:
        """What `pack` depends on (the decode cache's key): the run's modality settings and the
        checkpoint's own preprocessing config (content, not the path it was read from)."""
        section = getattr(self.cfg, self.modality)      # cfg.text / cfg.image / cfg.audio: always there
        return f"{type(self).__name__} {json.dumps(dataclasses.asdict(section), sort_keys=True)} {self.hf_settings()}"

    def hf_settings(self) -> str:
        return self.hf.to_json_string()

    def pack(self, value) -> dict:
        """The cache stores a tower's inputs as its processor makes them (floats, unrounded)."""
        return {k: v.numpy() for k, v in self(value).items()}

    def unpack(self, packed: dict) -> dict:
        return {k: torch.from_numpy(np.array(v)) for k, v in packed.items()}

    def save(self, folder: Path):
        out = tower_folder(folder, self.modality)
        out.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(out))
        self.model_config.save_pretrained(str(out))
        (out / "polyfuse_tower.json").write_text(json.dumps({"encoder": getattr(self.cfg, self.modality).encoder}))

    @classmethod
    def load(cls, cfg: Config, folder: Path):
        return cls.create(cfg, TowerSource(str(tower_folder(folder, cls.modality)), with_weights=False))


class TowerTextProcessor(_TowerProcessor):
    modality = kind = "text"
    fields = TextProcessor.fields + ("present",)

    @classmethod
    def _load_hf(cls, path):
        return _hf("AutoTokenizer", path, "text")

    @property
    def tokenizer(self):
        return self.hf

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id or 0

    @property
    def mask_id(self) -> int:
        return self.hf.mask_token_id if self.hf.mask_token_id is not None else self.vocab_size - 1

    def hf_settings(self) -> str:
        # A fast tokenizer serialises whole; a slow one is known by its vocabulary and special tokens.
        if self.hf.is_fast:
            return self.hf.backend_tokenizer.to_str()
        return json.dumps([sorted(self.hf.get_vocab().items()), self.hf.all_special_tokens])

    def pack(self, value) -> dict:
        value = value if isinstance(value, str) else str(value)
        if not value.strip():
            raise InputError("text is empty (only whitespace)")
        ids = self.hf(value, truncation=True, max_length=self.cfg.text.max_length)["input_ids"]
        return {"ids": np.asarray(ids, dtype=np.int32)}

    unpack = TextProcessor.unpack

    def __call__(self, value) -> dict:
        return self.unpack(self.pack(value))

    collate = TextProcessor.collate        # pads with self.pad_id, the tower tokenizer's own


class TowerImageProcessor(_TowerProcessor):
    modality = kind = "image"
    fields = ("pixels", "present")

    def __init__(self, cfg, hf, model_config, source):
        super().__init__(cfg, hf, model_config, source)
        self.reader = ImageProcessor(cfg.image)          # same guarded decode as scratch images

    @classmethod
    def _load_hf(cls, path):
        return _hf("AutoImageProcessor", path, "image", backend="pil")

    def __call__(self, source) -> dict:
        img = self.reader.load_pil(source)
        if img.mode in ("RGBA", "LA", "P"):
            # Transparent pixels become white, as they are shown (the scratch processor does the same).
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
        pixels = self.hf(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        return {"pixels": pixels.float()}

    def collate(self, items: list[dict | None]) -> dict:
        # A column absent from every row still collates (the tower never runs on absent rows).
        shape = next((x["pixels"].shape for x in items if x is not None), (3, 1, 1))
        pixels = torch.zeros(len(items), *shape)
        present = torch.zeros(len(items), dtype=torch.bool)
        for i, x in enumerate(items):
            if x is not None:
                pixels[i], present[i] = x["pixels"], True
        return {"pixels": pixels, "present": present}


# Towers run on each clip's own length (encoders/whisper.py) rather than the fixed length their
# extractor pads to (Whisper: 30 s): the extractor is asked not to pad, and the processor adds
# silence only up to audio.tower_min_seconds.
CLIP_LENGTH = frozenset({"whisper"})


class TowerAudioProcessor(_TowerProcessor):
    """Raw waveform (wav2vec2) or spectrogram features (Whisper, AST): whatever the extractor makes.

    Rows are padded along their last axis; `lengths` keeps each row's real length so the tower
    gets an attention mask (when its extractor asks for one) and padding never leaks into a row.
    """
    modality = kind = "audio"
    fields = ("values", "lengths", "present")     # and attention_mask, where the extractor asks for one

    def __init__(self, cfg, hf, model_config, source):
        super().__init__(cfg, hf, model_config, source)
        self.reader = AudioProcessor(dataclasses.replace(cfg.audio, sample_rate=int(hf.sampling_rate)))
        # Feature extractors that take a mask (wav2vec2-large style) say so in their config.
        self.wants_attention_mask = bool(hf.return_attention_mask)
        self.clip_length = model_config.model_type in CLIP_LENGTH
        # Clip-length towers: no padding by the extractor, and the clip's own frames (the positions
        # the tower's output keeps) travel beside the values.
        self.pad = {"padding": "longest"} if self.clip_length else {}
        self.fields = (type(self).fields + ("attention_mask",) * self.wants_attention_mask
                       + ("frames",) * self.clip_length)

    @classmethod
    def _load_hf(cls, path):
        return _hf("AutoFeatureExtractor", path, "audio")

    def __call__(self, source) -> dict:
        wave = self.reader.decode(source)
        item = {}
        if self.clip_length:
            # The clip's frames (the extractor makes one per hop), then silence up to
            # audio.tower_min_seconds, as Whisper's 30-s windows put silence after speech: the
            # tower attends over both and keeps the clip's positions (encoders/pretrained.py).
            item["frames"] = torch.tensor([max(1, len(wave) // self.hf.hop_length)])
            shortfall = int(self.cfg.audio.tower_min_seconds * self.hf.sampling_rate) - len(wave)
            wave = np.pad(wave, (0, max(0, shortfall)))
        feats = self.hf(wave, sampling_rate=self.hf.sampling_rate, return_tensors="pt", **self.pad)
        item["values"] = feats[self.hf.model_input_names[0]][0].float()
        return item

    def collate(self, items: list[dict | None]) -> dict:
        real = [x["values"] for x in items if x is not None]
        # A column absent from every row still collates (the tower never runs on absent rows).
        lead, L = (real[0].shape[:-1], max(v.shape[-1] for v in real)) if real else ((), 1)
        values = torch.zeros(len(items), *lead, L)
        lengths = torch.zeros(len(items), dtype=torch.long)
        for i, x in enumerate(items):
            if x is not None:
                n = x["values"].shape[-1]
                values[i, ..., :n], lengths[i] = x["values"], n
        out = {"values": values, "lengths": lengths, "present": lengths > 0}
        if self.clip_length:
            out["frames"] = torch.tensor([0 if x is None else int(x["frames"][0]) for x in items])     # (B,)
        if self.wants_attention_mask:
            out["attention_mask"] = (torch.arange(L)[None] < lengths[:, None]).long()   # (B, L)
        return out


TOWER_PROCESSORS = {"text": TowerTextProcessor, "image": TowerImageProcessor, "audio": TowerAudioProcessor}


def make_processor(cfg: Config, modality: str):
    """The processor a non-scratch encoder setting needs, or None for the built-in ones."""
    encoder = getattr(cfg, modality).encoder
    if modality == "text" and encoder == "word2vec":
        from .word2vec import Word2VecTextProcessor
        return Word2VecTextProcessor(cfg.text, d_model=cfg.model.d_model, seed=cfg.train.seed)
    if is_network(encoder):
        return NetworkImageProcessor.create(cfg)
    if is_tower(encoder):
        return TOWER_PROCESSORS[modality].create(cfg, TowerSource(encoder, with_weights=True))
    return None


def load_processor(cfg: Config, modality: str, folder: Path):
    """A tower's processor from a run folder's processors/, or None when the modality has no tower."""
    if is_network(getattr(cfg, modality).encoder):
        return NetworkImageProcessor.load(cfg, folder)
    if is_tower(getattr(cfg, modality).encoder):
        if not (tower_folder(folder, modality) / "config.json").exists():
            raise ConfigError(f"{folder}: the run uses a pretrained {modality} tower but "
                              f"{tower_folder(folder, modality).name}/ is missing")
        return TOWER_PROCESSORS[modality].load(cfg, folder)
    return None


def tower_sources(processors, pretrained_weights: bool = False) -> dict:
    """{modality: what PolyfuseModel builds that modality's encoder from} (towers and word2vec init).

    pretrained_weights=True (training): towers load the configured checkpoint's weights, even when
    the processors were read back from a run folder (--resume, DDP ranks). False (reloading a
    finished run): the architecture comes from processors/, the weights from model.safetensors.
    """
    out = {}
    for m, proc in processors.by_modality.items():
        if isinstance(proc, _TowerProcessor):
            encoder = getattr(proc.cfg, m).encoder
            out[m] = TowerSource(encoder, True) if pretrained_weights else proc.source
        elif isinstance(proc, NetworkImageProcessor):     # the factory builds it; weights: pretrained or the run's
            out[m] = TowerSource(proc.reference, pretrained_weights)
        elif proc.kind == "text" and proc.init_vectors is not None:
            out[m] = proc.init_vectors
    return out
