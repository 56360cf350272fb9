"""image.resize: crop keeps the centre at the right aspect; pad keeps the whole image on the mean."""
import numpy as np
import torch
from PIL import Image

from polyfuse.config import ImageConfig
from polyfuse.data.image import ImageProcessor


def _wide():
    """40x20: left quarter black, right quarter white, middle grey."""
    px = np.full((20, 40, 3), 128, dtype=np.uint8)
    px[:, :10], px[:, 30:] = 0, 255
    return Image.fromarray(px)


def _proc(how):
    return ImageProcessor(ImageConfig(size=20, patch=4, resize=how, mean=[0.5] * 3, std=[0.5] * 3))


def test_crop_keeps_the_centre():
    x = _proc("crop").from_pil(_wide())                 # (3, 20, 20) of the middle 20 columns
    assert x.shape == (3, 20, 20)
    assert torch.allclose(x[:, :, 2:-2], torch.full_like(x[:, :, 2:-2], 128 / 255 * 2 - 1), atol=0.02)


def test_pad_keeps_everything_on_the_mean():
    x = _proc("pad").from_pil(_wide())                  # 20x10 image in the middle rows
    assert x.shape == (3, 20, 20)
    assert torch.allclose(x[:, :4], torch.zeros_like(x[:, :4]), atol=0.01)    # padding = mean = 0
    assert x[:, 10, 0].max() < -0.9 and x[:, 10, -1].min() > 0.9               # both ends kept


def test_squash_is_the_old_resize():
    img = _wide()
    x = _proc("squash").from_pil(img)
    ref = np.asarray(img.resize((20, 20), Image.BILINEAR), dtype=np.float32) / 255.0
    assert torch.allclose(x, (torch.from_numpy(ref).permute(2, 0, 1) - 0.5) / 0.5)
