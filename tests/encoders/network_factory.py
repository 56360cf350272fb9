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


class _Blocks(nn.Module):
    """A network that declares its block list, so `unfreeze_top_k` can train its top blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())])
        self.head = nn.BatchNorm2d(12)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def tiny_blocks(pretrained: bool = True) -> NetworkTower:
    torch.manual_seed(1234 if pretrained else 99)
    return NetworkTower(_Blocks(), size=16, mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3), width=12,
                        layers="blocks", after=("head",))


def not_a_tower(pretrained: bool = True):
    return nn.Linear(2, 2)
