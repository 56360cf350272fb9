"""The convolutional stems carry the input to the tokens and learn a trivial task (regression test:
with PyTorch's default conv init the image stem's tokens were nearly input-independent and training
sat at chance)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from polyfuse.config import Config
from polyfuse.data.image import ImageProcessor
from polyfuse.data.synthetic import make_image
from polyfuse.encoders.audio import AudioEncoder
from polyfuse.encoders.image import conv_stem
from polyfuse.model import PolyfuseModel


def test_image_conv_stem_output_depends_on_the_input():
    torch.manual_seed(0)
    stem = conv_stem(3, 64, 8)
    with torch.no_grad():
        h = stem(torch.randn(32, 3, 32, 32))                  # (B, D, 4, 4)
    per_input = float(h.std(0).mean())                        # what differs between inputs
    constant = float(h.mean(0).std())                         # what every input gets alike
    assert per_input > 0.2 and per_input > constant


def test_audio_conv_stem_output_depends_on_the_input():
    torch.manual_seed(0)
    cfg = Config().merged({"audio": {"stem": "conv", "frames_per_token": 8}})
    enc = AudioEncoder(cfg).eval()
    F = 64
    with torch.no_grad():
        x = enc.out(torch.nn.functional.gelu(enc.convs[0](torch.randn(32, cfg.audio.n_mels, F))))
    assert float(x.std(0).mean()) > 0.2


@pytest.mark.parametrize("image", [{"stem": "conv"}, {"stem": "cnn", "stem_width": 8}])
def test_image_conv_stem_learns_a_trivial_task(image):
    """Horizontal vs vertical bar: the conv (and cnn) stem must fit it in a few dozen steps."""
    torch.set_num_threads(1)
    cfg = Config().merged({"schema": {"label": "y", "image": ["img"], "task": "classification"},
                           "image": image})
    rng = np.random.default_rng(0)
    proc = ImageProcessor(cfg.image)
    ys = rng.integers(0, 2, 128)
    X = torch.stack([proc.from_pil(make_image(rng, int(y))) for y in ys])
    Y = torch.tensor(ys)
    torch.manual_seed(0)
    model = PolyfuseModel(cfg, cfg.schema, 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def batch(i):
        return {"inputs": {"img": {"pixels": X[i], "present": torch.ones(len(i), dtype=torch.bool),
                                   "modality": "image"}}, "label": Y[i]}
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        loss = model(batch(torch.randint(0, len(Y), (32,), generator=g)))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(batch(torch.arange(len(Y))))["logits"].argmax(-1) == Y).float().mean())
    assert acc >= 0.9, f"conv stem stuck near chance: train accuracy {acc:.2f}"
