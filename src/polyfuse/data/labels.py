"""Label codecs: class maps for (multi-label) classification, standardisation for regression."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .manifest import is_missing


@dataclass
class Predictions:
    """Predictions for N rows, in label units."""
    task: str
    classes: list[str]
    outputs: np.ndarray        # (N, K) class probabilities; (N, 1) the predicted value (regression)
    labels: list               # per row: class name, 'a|b' (multi-label), or a number

    def __len__(self) -> int:
        return len(self.labels)

    def probabilities(self) -> np.ndarray:
        if self.task == "regression":
            raise AttributeError("a regression model has no probabilities; use the predicted values")
        return self.outputs

    def values(self) -> np.ndarray:
        """What `predict` returns: class names (object array) or numbers (float array)."""
        return np.array(self.labels, dtype=float if self.task == "regression" else object)

    def records(self) -> list[dict]:
        """One dict per row, as the server answers: prediction, and probabilities by class."""
        if self.task == "regression":
            return [{"prediction": v} for v in self.labels]
        return [{"prediction": d, "probabilities": {c: float(p) for c, p in zip(self.classes, row)}}
                for d, row in zip(self.labels, self.outputs)]

    def columns(self) -> dict[str, list]:
        """Columns `polyfuse predict` adds to the table: prediction, then proba_<class>."""
        out = {"prediction": self.labels}
        if self.task != "regression":
            out.update({f"proba_{c}": np.round(self.outputs[:, k], 6).tolist() for k, c in enumerate(self.classes)})
        return out


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

    def to_units(self, head_outputs: np.ndarray) -> np.ndarray:
        """The head's outputs (TaskHead.probabilities) -> label units, (N, K): probabilities stay
        probabilities; a regression head predicts the standardised target, undone here and only here."""
        head_outputs = np.asarray(head_outputs, dtype=np.float64)
        if self.task == "regression":
            return head_outputs.reshape(-1, 1) * self.std + self.mean
        return head_outputs

    def decode(self, outputs: np.ndarray) -> list:
        """Outputs in label units (N, K) -> label values: class name, 'a|b', or the number itself."""
        if self.task == "regression":
            return [float(v) for v in np.asarray(outputs).reshape(-1)]
        if self.task == "multilabel":
            return ["|".join(c for c, on in zip(self.classes, row) if on) for row in np.asarray(outputs) >= 0.5]
        return [self.classes[i] for i in np.asarray(outputs).argmax(axis=1)]

    def predictions(self, head_outputs: np.ndarray) -> "Predictions":
        """What every prediction path returns (API, CLI, server, evaluate, report), from the head's outputs."""
        outputs = self.to_units(head_outputs)
        return Predictions(self.task, list(self.classes), outputs, self.decode(outputs))

    def to_dict(self) -> dict:
        return {"task": self.task, "classes": self.classes, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelCodec":
        return cls(**d)


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
