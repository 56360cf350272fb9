"""Polyfuse's CPU dropout: F.dropout's contract, with its mask drawn four elements per 64-bit draw."""
import pytest
import torch
from torch import nn

from polyfuse.fusion.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 1_000_000
    keep = keep_mask((n,), p, torch.device("cpu")).double()
    sd = ((1 - p) * p / n) ** 0.5
    assert abs(keep.mean().item() - (1 - p)) < 5 * sd
    # Each of the four 16-bit lanes of a draw, and neighbours sharing a draw, are independent.
    lanes = keep.view(-1, 4)
    for j in range(4):
        assert abs(lanes[:, j].mean().item() - (1 - p)) < 5 * 2 * sd
    both = (lanes[:, 0] * lanes[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * 2 * sd


def test_dropped_elements_are_zero_kept_ones_scaled_and_the_gradient_follows_the_mask():
    torch.manual_seed(1)
    x = torch.randn(7, 13, 5, requires_grad=True)              # numel not a multiple of 4
    y = dropout(x, 0.25, True)
    kept = y != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.allclose(y[kept], x.detach()[kept] / 0.75)
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_the_mean_is_preserved_and_the_module_is_identity_in_eval():
    torch.manual_seed(2)
    x = torch.full((200_000,), 3.0)
    m = Dropout(0.3)
    assert abs(m(x).mean().item() - 3.0) < 0.03
    m.eval()
    assert m(x) is x
    assert Dropout(0.0).train()(x) is x
    assert dict(m.state_dict()) == dict(nn.Dropout(0.3).state_dict())      # no state: checkpoints unchanged


def test_the_mask_follows_torch_seed_so_resumed_runs_repeat_it():
    torch.manual_seed(3)
    a = keep_mask((10, 10), 0.5, torch.device("cpu"))
    torch.manual_seed(3)
    b = keep_mask((10, 10), 0.5, torch.device("cpu"))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        Dropout(1.5)
