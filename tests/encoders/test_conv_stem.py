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


def test_masked_batch_norm_ignores_padding_in_training():
    """The training statistics of the 2-D audio stem count real frames only: padding a clip further,
    or adding an all-padding row (a row without audio), leaves every real value unchanged."""
    from polyfuse.encoders.audio import MaskedBatchNorm2d
    torch.manual_seed(0)
    bn = MaskedBatchNorm2d(3).train()
    x = torch.randn(2, 3, 5, 8) * 2 + 1                        # (B, C, bands, frames)
    mask = torch.ones(2, 8, dtype=torch.bool)
    plain = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    padded = torch.cat([x, torch.full((2, 3, 5, 4), 7.0)], 3)
    pmask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    extra = torch.cat([padded, torch.full((1, 3, 5, 12), -5.0)])
    emask = torch.cat([pmask, torch.zeros(1, 12, dtype=torch.bool)])
    torch.testing.assert_close(bn(padded, pmask)[..., :8], plain)
    torch.testing.assert_close(bn(extra, emask)[:2, ..., :8], plain)
    assert bn.num_batches_tracked == 2 and not torch.allclose(bn.running_mean, torch.zeros(3))


@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_audio_cnn_stem_gives_one_token_per_k_frames(k):
    """The first layer strides over frames only when a token spans several: a token's place in
    time stays that of its first frame for every k."""
    cfg = Config().merged({"audio": {"stem": "cnn", "n_mels": 16, "max_seconds": 0.64, "stem_width": 4,
                                     "frames_per_token": k}})
    enc = AudioEncoder(cfg).eval()
    mask = torch.arange(64)[None] < torch.tensor([[64], [37]])                 # (2, 64): 64 and 37 real frames
    out = enc({"mel": torch.randn(2, 16, 64), "mask": mask})
    assert out["tokens"].shape[1] == 64 // k
    assert out["mask"].sum(1).tolist() == [64 // k, -(-37 // k)]


def test_audio_cnn_stem_learns_pitch_shifted_words():
    """Two 'words' (a rising vs a falling band sweep), each spoken at random pitch (band offset) and
    onset: the 2-D stem must tell them apart after a short training, on offsets it never saw."""
    torch.set_num_threads(1)
    cfg = Config().merged({"schema": {"label": "y", "audio": ["a"], "task": "classification"},
                           "audio": {"stem": "cnn", "n_mels": 32, "max_seconds": 0.64, "stem_width": 8}})
    g = torch.Generator().manual_seed(0)

    def clips(n, offsets):
        y = torch.randint(0, 2, (n,), generator=g)
        mel = torch.randn(n, 32, 64, generator=g) * 0.3
        for i in range(n):
            o = int(offsets[torch.randint(0, len(offsets), (1,), generator=g)])
            t0 = int(torch.randint(0, 40, (1,), generator=g))
            for j in range(12):
                band = o + (j if y[i] else 11 - j) // 2
                mel[i, band, t0 + j] += 3.0
        return mel, y

    train_x, train_y = clips(256, [0, 4, 8, 16])
    test_x, test_y = clips(128, [2, 12])                       # pitches between and beside the trained ones
    torch.manual_seed(0)
    model = PolyfuseModel(cfg, cfg.schema, 2)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)

    def batch(x, y):
        return {"inputs": {"a": {"mel": x, "mask": torch.ones(len(x), x.shape[2], dtype=torch.bool),
                                 "present": torch.ones(len(x), dtype=torch.bool), "modality": "audio"}}, "label": y}
    for _ in range(60):
        i = torch.randint(0, len(train_y), (32,), generator=g)
        loss = model(batch(train_x[i], train_y[i]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(batch(test_x, test_y))["logits"].argmax(-1) == test_y).float().mean())
    assert acc >= 0.9, f"2-D audio stem did not learn shifted sweeps: accuracy {acc:.2f}"
