"""An exponential moving average of the weights a run trains (train.ema_epochs).

Late in a run the weights wander around a minimum at the learning rate's scale, and an unheard
speaker or style sees each epoch's wander as noise: its score moves by several points from one
epoch to the next while the training loss barely does. The average of the recent steps sits
nearer the middle, so it scores steadier and better (Polyak averaging; timm's ModelEma, fairseq's
and ESPnet's checkpoint averaging). Validation, the best epoch and the saved model all use the
average; the optimizer keeps stepping the live weights, which a checkpoint keeps beside it.
"""
from __future__ import annotations

import torch


class WeightAverage:
    """The average of the tensors that can change: parameters that train (a frozen tower's are
    left out, so a frozen decoder's weights cost no copy) and every floating-point buffer in the
    state dict (BatchNorm's running statistics; a frozen tower's too, which are small and stay
    put). A parameter that starts training later (a second stage) joins at its value then."""

    def __init__(self, horizon_steps: float, state: dict[str, torch.Tensor] | None = None, updates: int = 0):
        self.decay = 1.0 - 1.0 / max(1.0, horizon_steps)
        self.state = dict(state or {})
        self.updates = updates

    def _changing(self, module: torch.nn.Module):
        for name, t in module.state_dict(keep_vars=True).items():
            if t.is_floating_point() and not (isinstance(t, torch.nn.Parameter) and not t.requires_grad):
                yield name, t

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        """After an optimizer step. The first steps average over fewer steps ((1 + n) / (10 + n),
        as timm and TensorFlow do), so the initial weights do not linger in it."""
        self.updates += 1
        keep = min(self.decay, (1 + self.updates) / (10 + self.updates))
        avgs, values = [], []
        for name, t in self._changing(module):
            avg = self.state.get(name)
            if avg is None:
                self.state[name] = t.detach().clone()
                continue
            if avg.device != t.device:              # read back from a checkpoint onto the CPU
                avg = self.state[name] = avg.to(t.device)
            avgs.append(avg)
            values.append(t.detach())
        if avgs:        # every step: one multi-tensor update, as the optimizer's foreach step
            torch._foreach_lerp_(avgs, values, 1.0 - keep)

    @torch.no_grad()
    def swap_in(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Put the average into the module; returns the live tensors it replaced (for swap_out)."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items() if k in self.state}
        module.load_state_dict(self.state, strict=False)
        return live

    @torch.no_grad()
    def swap_out(self, module: torch.nn.Module, live: dict[str, torch.Tensor]):
        module.load_state_dict(live, strict=False)
