"""Label codecs: class maps for (multi-label) classification, standardisation for regression."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .manifest import is_missing


class LabelCodec:
    def __init__(self, task: str, classes: list[str] | None = None, mean: float = 0.0, std: float = 1.0):
        self.task, self.classes, self.mean, self.std = task, classes or [], mean, std

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.classes)

    def fit(self, values) -> "LabelCodec":
        values = [v for v in values if not is_missing(v)]
        if self.task == "regression":
            nums = np.array([float(v) for v in values], dtype=np.float64)
            self.mean, self.std = float(nums.mean()), float(nums.std() or 1.0)
        elif self.task == "multilabel":
            self.classes = sorted({p.strip() for v in values for p in str(v).split("|") if p.strip()})
        else:
            self.classes = sorted({_norm(v) for v in values}, key=_natural)
        if self.task != "regression" and len(self.classes) < 2:
            raise InputError(f"the label column has {len(self.classes)} distinct value(s); need at least 2")
        return self

    def encode(self, value) -> torch.Tensor:
        """Raises InputError (without location: the caller adds it) for a missing or unknown label."""
        if is_missing(value):
            raise InputError("missing label")
        if self.task == "regression":
            try:
                return torch.tensor((float(value) - self.mean) / self.std, dtype=torch.float32)
            except ValueError:
                raise InputError(f"label {value!r} is not a number") from None
        if self.task == "multilabel":
            y = torch.zeros(len(self.classes))
            for part in str(value).split("|"):
                part = part.strip()
                if part and part not in self.classes:
                    raise InputError(f"label {part!r} was not seen in training")
                if part:
                    y[self.classes.index(part)] = 1.0
            return y
        v = _norm(value)
        if v not in self.classes:
            raise InputError(f"label {v!r} was not seen in training (known: {', '.join(self.classes[:20])})")
        return torch.tensor(self.classes.index(v), dtype=torch.long)

    def decode(self, outputs: np.ndarray) -> list:
        """Model outputs -> label values: class name, 'a|b', or a number."""
        if self.task == "regression":
            return (outputs.reshape(-1) * self.std + self.mean).tolist()
        if self.task == "multilabel":
            return ["|".join(c for c, on in zip(self.classes, row) if on) for row in outputs >= 0.5]
        return [self.classes[i] for i in outputs.argmax(axis=1)]

    def to_dict(self) -> dict:
        return {"task": self.task, "classes": self.classes, "mean": self.mean, "std": self.std}

    def save(self, path: Path):
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "LabelCodec":
        return cls(**json.loads(path.read_text()))


def _norm(v) -> str:
    """'3', 3 and 3.0 are one class: numeric labels read from CSV and from a DataFrame must agree."""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _natural(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)
