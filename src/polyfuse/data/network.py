"""Any PyTorch network as a tower: `--image-encoder module:factory`.

The factory is an importable callable `factory(pretrained: bool) -> NetworkTower`: the network,
and the preprocessing its weights were trained with (input side, mean, std). Called with
pretrained=True when training starts (it loads its weights, from wherever it keeps them) and
with pretrained=False when a run is reloaded: the architecture comes from the factory, the
weights (tuned or not) from the run's model.safetensors, so predict, serve and embed never need
the original weights file. The network maps pixels (B, 3, S, S), normalised with mean/std, to a
feature map (B, C, h, w) — each position a fusion token, as for a Hugging Face conv net — or to
tokens (B, T, C) or one vector (B, C).

    polyfuse train ... --image-encoder polyfuse.zoo:efficientnet_lite0 --freeze-encoders
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

from torch import nn

from ..config import Config
from ..errors import ConfigError
from .image import ImageProcessor


@dataclasses.dataclass
class NetworkTower:
    network: nn.Module
    size: int                                    # input side in pixels
    mean: tuple[float, float, float]            # per channel, on pixels in [0, 1]
    std: tuple[float, float, float]
    width: int                                   # channels (or features) of the output
    # What `model.unfreeze_top_k` trains again: the dotted path of the network's ordered block
    # list (bottom to top) and the modules after the last block (final conv, norm). None: the
    # network declares no blocks, and unfreeze_top_k on it is an error (freeze or LoRA it).
    layers: str | None = None
    after: tuple[str, ...] = ()


def load_network(reference: str, pretrained: bool) -> NetworkTower:
    """Import `module:factory` and call it; a wrong reference or return value is a ConfigError."""
    module_name, _, name = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"image.encoder {reference!r}: cannot import the factory ({e})") from None
    tower = factory(pretrained=pretrained)
    if not isinstance(tower, NetworkTower):
        raise ConfigError(f"image.encoder {reference!r}: the factory must return a polyfuse NetworkTower, "
                          f"got {type(tower).__name__}")
    return tower


class NetworkImageProcessor(ImageProcessor):
    """The built-in image processor at the network's own input size and normalisation."""
    NAME = "image_network.json"

    def __init__(self, cfg: Config, reference: str, size: int, mean, std):
        super().__init__(dataclasses.replace(cfg.image, size=int(size), patch=int(size), mean=list(mean),
                                             std=list(std)))
        self.reference = reference

    @classmethod
    def create(cls, cfg: Config) -> "NetworkImageProcessor":
        tower = load_network(cfg.image.encoder, pretrained=False)     # the preprocessing only
        return cls(cfg, cfg.image.encoder, tower.size, tower.mean, tower.std)

    def save(self, folder: Path):
        super().save(folder)
        (folder / self.NAME).write_text(json.dumps({"encoder": self.reference, "size": self.cfg.size,
                                                     "mean": self.cfg.mean, "std": self.cfg.std}))

    @classmethod
    def load(cls, cfg: Config, folder: Path) -> "NetworkImageProcessor":
        path = folder / cls.NAME
        if not path.exists():
            raise ConfigError(f"{folder}: the run uses the image network {cfg.image.encoder!r} but {cls.NAME} is missing")
        saved = json.loads(path.read_text())
        return cls(cfg, saved["encoder"], saved["size"], saved["mean"], saved["std"])
