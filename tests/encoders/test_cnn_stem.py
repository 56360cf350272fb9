"""image.stem 'cnn': residual GroupNorm stem. Tokens per patch, batch-independent, validated config
(that it learns a trivial task: test_conv_stem.py)."""
from __future__ import annotations

import pytest
import torch

from polyfuse.config import Config
from polyfuse.encoders.cnn_stem import cnn_stem
from polyfuse.encoders.image import ImageEncoder
from polyfuse.errors import ConfigError


def cnn_cfg(**image):
    return Config().merged({"image": {"stem": "cnn", "size": 32, "patch": 8, "stem_width": 8, **image}})


def test_tokens_one_per_patch_with_presence_mask():
    torch.manual_seed(0)
    enc = ImageEncoder(cnn_cfg(size=40)).eval()
    present = torch.tensor([True, False, True])
    out = enc({"pixels": torch.randn(3, 3, 40, 40), "present": present})
    assert out["tokens"].shape == (3, 25, 64)                          # (40 / 8)^2 tokens of d_model
    assert out["mask"].tolist() == [[p] * 25 for p in present.tolist()]


def test_a_row_is_encoded_the_same_alone_or_beside_absent_and_other_images():
    """GroupNorm, not BatchNorm: a row's tokens must not depend on the rest of the batch (an absent,
    all-zero image, DDP shards, batch-1 serving)."""
    torch.manual_seed(0)
    # Training mode (dropout 0): BatchNorm would use the batch's statistics here.
    enc = ImageEncoder(cnn_cfg().merged({"model": {"dropout": 0.0}})).train()
    x = torch.randn(1, 3, 32, 32)
    alone = enc({"pixels": x, "present": torch.tensor([True])})["tokens"]
    batch = torch.cat([x, torch.zeros(1, 3, 32, 32), 3 * torch.randn(2, 3, 32, 32)])
    mixed = enc({"pixels": batch, "present": torch.tensor([True, False, True, True])})["tokens"]
    torch.testing.assert_close(mixed[:1], alone, rtol=1e-5, atol=1e-5)


def test_batch_norm_stem_leaves_absent_images_out_of_its_statistics():
    """stem_norm 'batch': in training an absent (all-zero) image changes neither the other rows'
    tokens nor the running statistics; in eval a row is encoded the same alone or in any batch."""
    torch.manual_seed(0)
    cfg = cnn_cfg(stem_norm="batch").merged({"model": {"dropout": 0.0}})
    enc = ImageEncoder(cfg).train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    twin = ImageEncoder(cfg).train()
    twin.load_state_dict(enc.state_dict())
    x = torch.randn(3, 3, 32, 32)
    real = enc({"pixels": x, "present": torch.ones(3, dtype=torch.bool)})["tokens"]
    with_absent = torch.cat([x[:1], torch.zeros(1, 3, 32, 32), x[1:]])
    out = twin({"pixels": with_absent, "present": torch.tensor([True, False, True, True])})
    torch.testing.assert_close(out["tokens"][[0, 2, 3]], real, rtol=1e-5, atol=1e-5)
    assert not out["mask"][1].any() and float(out["tokens"][1].detach().abs().max()) < 1.0   # position embedding only
    torch.testing.assert_close(twin.state_dict(), enc.state_dict())               # running stats included
    none = twin({"pixels": torch.zeros(2, 3, 32, 32), "present": torch.zeros(2, dtype=torch.bool)})
    assert not none["mask"].any()
    torch.testing.assert_close(twin.state_dict(), enc.state_dict())               # nothing to learn from
    enc.eval()
    alone = enc({"pixels": x[:1], "present": torch.tensor([True])})["tokens"]
    mixed = enc({"pixels": with_absent, "present": torch.tensor([True, False, True, True])})["tokens"]
    torch.testing.assert_close(mixed[:1], alone, rtol=1e-5, atol=1e-5)


def test_max_pool_downsampling_keeps_the_token_grid():
    """stem_downsample 'max': one 2x2 max-pool per halving, no strided convolution, same grid."""
    torch.manual_seed(0)
    enc = ImageEncoder(cnn_cfg(size=40, stem_downsample="max")).eval()
    convs = [m for m in enc.patch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.patch.modules()) == 3       # patch 8
    assert all(c.stride == (1, 1) for c in convs)
    out = enc({"pixels": torch.randn(2, 3, 40, 40), "present": torch.tensor([True, True])})
    assert out["tokens"].shape == (2, 25, 64)


def test_initial_output_depends_on_the_input():
    """He init and identity-initialised blocks keep the per-image signal at unit scale."""
    torch.manual_seed(0)
    with torch.no_grad():
        h = cnn_stem(3, 64, 8, width=8, blocks=2)(torch.randn(32, 3, 32, 32))   # (B, D, 4, 4)
    assert h.shape == (32, 64, 4, 4)
    assert 0.2 < float(h.std(0).mean()) < 5.0


@pytest.mark.parametrize("image, message", [
    ({"patch": 6, "size": 36}, "power-of-two"),
    ({"stem_width": 0}, "stem_width"),
    ({"stem_blocks": -1}, "stem_blocks"),
    ({"stem": "resnet"}, "'cnn'"),
    ({"stem_norm": "layer"}, "stem_norm"),
    ({"stem_downsample": "avg"}, "stem_downsample"),
])
def test_config_errors(image, message):
    with pytest.raises(ConfigError, match=message):
        cnn_cfg(**image)
