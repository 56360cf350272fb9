"""train.ema_epochs: validation, the best epoch and the result use a moving average of the weights."""
import pytest
import torch

import polyfuse.training.trainer as trainer
from polyfuse.config import TrainConfig
from polyfuse.training.trainer import Trainer, make_accelerator


def _fit(monkeypatch, ema_epochs, validate=None, epochs=3, rows=64, batch=16):
    """A linear model with one frozen parameter; returns (model, the live weights after every step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[1].bias.requires_grad_(False)
    x, y = torch.randn(rows, 4), torch.randn(rows)
    live = []
    monkeypatch.setattr(trainer, "after_step", lambda state: live.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}))
    tc = TrainConfig(epochs=epochs, batch_size=batch, lr=0.05, patience=None, warmup_ratio=0.0, ema_epochs=ema_epochs)
    Trainer(tc, make_accelerator(), progress=False).fit(
        model, rows, lambda idx: {"x": x[idx], "y": y[idx]},
        lambda m, b: {"loss": ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()}, validate)
    return model, live


def test_the_result_is_the_moving_average_of_the_steps(monkeypatch):
    model, live = _fit(monkeypatch, ema_epochs=1.0)            # 4 steps per epoch: decay 3/4
    expected = dict(live[0])
    for n, weights in enumerate(live[1:], 2):
        keep = min(0.75, (1 + n) / (10 + n))
        expected = {k: expected[k] + (1 - keep) * (weights[k] - expected[k]) for k in expected}
    got = model.state_dict()
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    assert not torch.allclose(got["0.weight"], live[-1]["0.weight"])              # not the last step
    assert torch.equal(got["1.bias"], live[0]["1.bias"])                          # frozen: untouched


def test_validation_sees_the_average_and_training_goes_on_from_the_live_weights(monkeypatch):
    seen = []
    model, live = _fit(monkeypatch, ema_epochs=1.0,
                       validate=lambda m: seen.append(m[0].weight.detach().clone()) or {"val_loss": 0.0, "score": 0.0})
    assert len(seen) == 3 and not torch.allclose(seen[0], live[3]["0.weight"])    # after epoch 1: not its last step
    # Without the average the same seed takes exactly the same steps: swapping back lost nothing.
    _, plain = _fit(monkeypatch, ema_epochs=0.0)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(live, plain) for k in a)


def test_ema_epochs_must_not_be_negative():
    from polyfuse.errors import ConfigError
    with pytest.raises(ConfigError, match="ema_epochs"):
        TrainConfig(ema_epochs=-1).validate()
