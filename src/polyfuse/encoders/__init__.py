"""Per-modality encoders. All share one interface:

    forward(batch_part) -> {"tokens": (B, T_m, D), "mask": (B, T_m) bool, True on real tokens}

A row where the modality is absent has an all-False mask: its tokens never take part in attention.
"""
from .audio import AudioEncoder
from .image import ImageEncoder
from .text import TextEncoder

ENCODERS = {"text": TextEncoder, "image": ImageEncoder, "audio": AudioEncoder}

__all__ = ["ENCODERS", "TextEncoder", "ImageEncoder", "AudioEncoder"]
