"""Fusion modules: forward({column: encoder output}) -> {"pooled": (B, D), "per_column_pooled": {...}, ...}."""
from .attention import AttentionFusion
from .concat import ConcatFusion
from .late import LateFusion

FUSIONS = {"attention": AttentionFusion, "concat": ConcatFusion, "late": LateFusion}

__all__ = ["FUSIONS", "AttentionFusion", "ConcatFusion", "LateFusion"]
