"""fill_budget: the epochs come from the measured speed, the run ends inside the budget, and a
resumed run keeps the epochs it planned. The clock is simulated, so the test times nothing."""
import pytest
import torch

import polyfuse.training.trainer as trainer
from polyfuse.config import TrainConfig
from polyfuse.training.trainer import Trainer, make_accelerator


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fit(clock, step_s, minutes=1.0, rows=64, batch=16, validate=None, patience=None, fill_budget=True, **kw):
    """step_s: seconds each optimizer step "takes", or a function of the step's number (1, 2, ...)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(rows, 4), torch.randn(rows)
    calls = []

    def step(m, b):
        calls.append(1)
        clock.now += step_s(len(calls)) if callable(step_s) else step_s
        return {"loss": ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()}

    tc = TrainConfig(epochs=3, batch_size=batch, max_minutes=minutes, fill_budget=fill_budget, patience=patience,
                     warmup_ratio=0.0, **kw)
    t = Trainer(tc, make_accelerator(), progress=False)
    state = t.fit(model, rows, lambda idx: {"x": x[idx], "y": y[idx]}, step, validate)
    return state, t


def test_epochs_fill_the_budget(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, t = _fit(clock, step_s=1.0)            # 4 steps = 4 s per epoch; 60 s budget
    budget = 60 * trainer.BUDGET_SHARE
    assert state["epochs"] == 1 + int((budget - 4) // 4) and state["epoch"] == state["epochs"]
    assert state["stopped"] is None
    assert 0.8 * 60 <= state["elapsed_s"] <= 60
    # The schedule was stretched to the chosen length: it ends at lr 0, not at epoch 3 of 3.
    assert t.log[-1]["lr"] == pytest.approx(0.0, abs=1e-6)
    assert t.log[2]["lr"] > 0.5 * TrainConfig.lr


def test_validation_plateau_stops_before_the_budget(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, _ = _fit(clock, step_s=1.0, validate=lambda m: {"val_loss": 1.0, "score": 0.5}, patience=3)
    assert state["stopped"] == "early_stopping" and state["epoch"] == 4 < state["epochs"]


def test_a_falling_validation_loss_is_no_plateau(monkeypatch):
    """A score stuck at its best (accuracy near the top) while the loss still falls keeps training;
    the checkpoint kept is still the best score's (ties: the lower loss)."""
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    losses = iter([1.0, 0.9, 0.95, 0.85, 0.8, 0.79, 0.78, 0.77, 0.76, 0.75] + [0.75] * 100)
    scores = iter([0.5, 0.9, 0.8, 0.8, 0.8, 0.85, 0.8, 0.8, 0.8, 0.8] + [0.8] * 100)
    state, _ = _fit(clock, step_s=1.0, validate=lambda m: {"val_loss": next(losses), "score": next(scores)},
                    patience=3)
    assert state["best_epoch"] == 2 and state["stopped"] == "early_stopping"
    assert state["epoch"] == 13                   # 3 epochs after the loss last fell (epoch 10)


def test_a_long_planned_schedule_waits_a_quarter_of_it_before_stopping(monkeypatch):
    """patience 3, but 27 epochs planned to fill the budget: a plateau stops the run after 6."""
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, _ = _fit(clock, step_s=0.5, validate=lambda m: {"val_loss": 1.0, "score": 0.5}, patience=3)
    assert state["epochs"] == 1 + int((60 * trainer.BUDGET_SHARE - 2) // 2) == 27
    assert state["stopped"] == "early_stopping" and state["epoch"] == 1 + 27 // 4


def test_a_slow_first_epoch_does_not_set_the_plan(monkeypatch):
    """Epoch 1 fills a feature cache (10x slower): the plan made from it (2 epochs) is redone from
    the second, so the run still fills the budget."""
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, _ = _fit(clock, step_s=lambda n: 6.0 if n <= 4 else 0.6)      # 4 steps per epoch
    assert state["epoch"] == state["epochs"] > 10
    assert 0.8 * 60 <= state["elapsed_s"] <= 60


def test_epochs_asked_for_are_not_replaced(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, _ = _fit(clock, step_s=1.0, fill_budget=False)
    assert state["epoch"] == 3 and state["epochs"] is None


def test_a_slow_start_does_not_cut_the_run_short(monkeypatch):
    """The first epoch runs at a third of the speed (a busy machine); later epochs re-plan."""
    clock = Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    state, _ = _fit(clock, step_s=lambda n: 3.0 if n <= 4 else 1.0)
    first_plan = 1 + int((60 * trainer.BUDGET_SHARE - 12) // 12)      # what the first epoch alone suggests
    assert state["epochs"] > first_plan + 2
    assert 0.8 * 60 <= state["elapsed_s"] <= 60


def test_a_score_still_climbing_at_the_end_is_said(monkeypatch):
    """The outcome says a longer run may score higher when the score set a new high (beyond its
    noise) near the end; a score level at its top while the loss falls says nothing."""
    from polyfuse.planning.run import budget_outcome

    def run(score, step_s=1.0):         # score(k) for the k-th validation (0, 1, ...); the loss always falls
        clock, calls = Clock(), iter(range(1000))
        monkeypatch.setattr(trainer.time, "perf_counter", clock)

        def validate(m):
            k = next(calls)
            return {"val_loss": 1.0 / (k + 1), "score": score(k), "score_noise": 0.0005}
        state, t = _fit(clock, step_s=step_s, validate=validate)
        return state, budget_outcome(t.cfg, state, validated=True)

    state, outcome = run(lambda k: k / 1000)                     # rises by twice its noise every epoch
    assert state["rising_epoch"] == state["epoch"] and outcome["still_rising"]
    assert f"new high in epoch {state['epoch']} of {state['epoch']}" in outcome["said"]
    state, outcome = run(lambda k: min(k, 3) / 10)               # level from the fourth epoch on
    assert state["rising_epoch"] == 4 and state["epoch"] > 10
    assert "still_rising" not in outcome and "new high" not in outcome["said"]
    state, outcome = run(lambda k: k / 10000)                    # rises, but within its noise
    assert state["rising_epoch"] == 1 and "still_rising" not in outcome
    state, outcome = run(lambda k: k / 1000, step_s=16.0)        # the time limit ends the first epoch
    assert state["epoch"] == 1 and state["stopped"] == "max_minutes" and "still_rising" not in outcome
