"""Per-modality encoders, all `Encoder`s (base.py):

    forward(batch_part) -> {"tokens": (B, T_m, D), "mask": (B, T_m) bool, True on real tokens}

A row where the modality is absent has an all-False mask: its tokens never take part in attention.
"""
from __future__ import annotations

from ..config import Config, is_tower
from ..data.pretrained import TowerSource
from ..data.word2vec import InitVectors
from .audio import AudioEncoder
from .base import Encoder
from .image import ImageEncoder
from .pretrained import TowerEncoder
from .text import TextEncoder, Word2VecTextEncoder

SCRATCH = {"text": TextEncoder, "image": ImageEncoder, "audio": AudioEncoder}


def build_encoder(modality: str, cfg: Config, vocab_size: int | None, source=None) -> Encoder:
    """The encoder cfg.<modality>.encoder asks for. `source` (from the processors) says where a
    tower's weights come from, or carries word2vec vectors; without it a tower loads its checkpoint."""
    encoder = getattr(cfg, modality).encoder
    if is_tower(encoder):
        return TowerEncoder(cfg, modality, source if isinstance(source, TowerSource) else TowerSource(encoder, True))
    if modality == "text":
        if encoder == "word2vec":
            return Word2VecTextEncoder(cfg, vocab_size, source if isinstance(source, InitVectors) else None)
        return SCRATCH["text"](cfg, vocab_size)
    return SCRATCH[modality](cfg)


__all__ = ["Encoder", "SCRATCH", "build_encoder", "TextEncoder", "ImageEncoder", "AudioEncoder", "TowerEncoder",
           "Word2VecTextEncoder"]
