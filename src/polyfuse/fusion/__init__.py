"""Fusion modules: forward({column: encoder output with "modality"}) -> Fused (fused.py)."""
from .attention import AttentionFusion
from .concat import ConcatFusion
from .fused import Fused
from .late import LateFusion

FUSIONS = {"attention": AttentionFusion, "concat": ConcatFusion, "late": LateFusion}

__all__ = ["FUSIONS", "Fused", "AttentionFusion", "ConcatFusion", "LateFusion"]
