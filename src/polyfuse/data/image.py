"""Image processor: Pillow decode (any mode to RGB), resize, normalise. Patches are cut by the encoder."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from ..config import ImageConfig
from ..errors import InputError
from .sources import source_name

ImageFile.LOAD_TRUNCATED_IMAGES = False   # a truncated file is an error, never silently grey


class ImageProcessor:
    kind = "image"
    fields = ("pixels", "present")      # what collate returns that the encoder reads (the serving graph's inputs)

    def __init__(self, cfg: ImageConfig):
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * self.std), self.mean / self.std     # normalise's two passes

    def fit(self, paths) -> "ImageProcessor":
        return self       # nothing learned from data: mean/std come from the config

    def save(self, folder: Path):
        """Nothing to save: every setting is in the config."""

    def load_pil(self, source) -> Image.Image:
        """Open a path or file-like object, refusing bombs before any pixel is decoded."""
        name = source_name(source)              # a path, or the shard and member of a file held as bytes
        if isinstance(source, (str, Path)) and not Path(source).exists():
            raise InputError("image file not found", file=name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(source)
                w, h = img.size
                if w * h > self.cfg.max_pixels:
                    raise InputError(f"image is {w}x{h} = {w * h} pixels, over the limit of "
                                     f"{self.cfg.max_pixels} (image.max_pixels)", file=name)
                img.load()
        except InputError:
            raise
        except UnidentifiedImageError:
            raise InputError("not a supported image format (or not an image)", file=name) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"image refused as a decompression bomb: {e}", file=name) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"corrupt or truncated image: {e}", file=name) from None
        return img

    def fingerprint(self) -> str:
        """Every setting `pack` depends on (the decode cache's key; mean and std too: pad fills with the mean)."""
        return f"{type(self).__name__} {json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)}"

    def pack(self, source) -> dict:
        """The compact decoded form the cache stores: {"pixels": (S, S, 3) uint8}, resized, not normalised."""
        return {"pixels": self.to_uint8(self.load_pil(source))}

    def unpack(self, packed: dict) -> dict:
        return {"pixels": self.normalise(packed["pixels"])}

    def __call__(self, source) -> dict:
        # Always through the packed form, so a cache hit and a fresh decode are the same tensors.
        return self.unpack(self.pack(source))

    def from_pil(self, img: Image.Image) -> torch.Tensor:
        return self.normalise(self.to_uint8(img))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        if img.mode in ("RGBA", "LA", "P"):
            # Transparent pixels become white, as they are shown, not black.
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        img = fit_square(img.convert("RGB"), self.cfg.size, self.cfg.resize, tuple(self.cfg.mean))
        return np.asarray(img, dtype=np.uint8)                                      # (S, S, 3)

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).permute(2, 0, 1)   # (3, S, S), 0..255, a copy
        # (x / 255 - mean) / std in place: three passes over the pixels instead of five
        return x.mul_(self._scale).sub_(self._shift)

    def collate(self, items: list[dict | None]) -> dict:
        S = self.cfg.size
        present = torch.tensor([x is not None for x in items], dtype=torch.bool)
        if present.all():              # the usual batch: one copy
            return {"pixels": torch.stack([x["pixels"] for x in items]), "present": present}
        pixels = torch.zeros(len(items), 3, S, S)
        for i, x in enumerate(items):
            if x is not None:
                pixels[i] = x["pixels"]
        return {"pixels": pixels, "present": present}


def fit_square(img: Image.Image, size: int, how: str, fill: tuple[float, float, float]) -> Image.Image:
    """An RGB image to size x size. squash: resize both sides; crop: the short side to `size`, then
    the centre (the aspect ratio kept, the edges of long images lost); pad: the long side to `size`,
    the rest filled with `fill` (the normalisation mean, so padding is 0 after normalising)."""
    w, h = img.size
    if how == "squash" or w == h:
        return img.resize((size, size), Image.BILINEAR)
    scale = size / (min(w, h) if how == "crop" else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    if how == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (size, size), tuple(round(255 * c) for c in fill))
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return canvas
