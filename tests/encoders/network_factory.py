"""A tiny network factory for the `module:factory` image tower tests (data/network.py)."""
import torch
from torch import nn

from polyfuse.data.network import NetworkTower

CALLS = []      # (pretrained,) per call: what the tests check the factory was asked for


def tiny_cnn(pretrained: bool = True) -> NetworkTower:
    CALLS.append(pretrained)
    torch.manual_seed(1234 if pretrained else 99)      # "pretrained" weights differ from a fresh build
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
    return NetworkTower(net, size=16, mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3), width=12)


def not_a_tower(pretrained: bool = True):
    return nn.Linear(2, 2)
