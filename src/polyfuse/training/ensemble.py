"""The ensemble's weights from the validation rows (model.ensemble; see PolyfuseModel._ensemble).

Trained jointly, each member (the fused path, each modality alone) is judged on rows it trained on,
where all of them look right. On held-out rows — best held out by group, a new speaker or source —
one member may be far less reliable than the others; the weights that minimise the held-out
negative log-likelihood of the weighted mean of the members' logits say by how much. A stacking
step as in AutoGluon's weighted ensemble, with M numbers fitted: few enough for a hundred rows.
"""
from __future__ import annotations

import torch

from ..model import weighted_mean
from ..util import to_device

PRIOR = 0.01      # pull of the weights' log-odds towards equal: a tie on held-out rows stays a tie


@torch.no_grad()
def member_outputs(model, data, collate, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (M, N, K), has (M, N), labels (N, ...)) of every member on every row of `data`."""
    model.eval()
    logits, has, labels = [], [], []
    for i in range(0, len(data), batch_size):
        batch = to_device(collate(list(range(i, min(i + batch_size, len(data)))), data), device)
        encoded = model.encode_columns(batch["inputs"])
        member_logits, member_has = model.members(encoded, model.head(model.fuse(encoded)))
        logits.append(member_logits.float().cpu())
        has.append(member_has.cpu())
        labels.append(batch["label"].cpu())
    return torch.cat(logits, 1), torch.cat(has, 1), torch.cat(labels, 0)


def fit_ensemble(model, data, collate, batch_size: int, device) -> dict:
    """Set model.ensemble_weights from `data`; {"weights": {member: w}, "loss_equal", "loss_fitted"}.
    The weights average 1 (1 each = the plain mean)."""
    logits, has, y = member_outputs(model, data, collate, batch_size, device)
    M = logits.shape[0]
    a = torch.zeros(M, requires_grad=True)                  # log-odds of the members' shares
    opt = torch.optim.LBFGS([a], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll(shares):
        return model.head.loss(weighted_mean(logits, has, shares), y, smooth=False)

    def closure():
        opt.zero_grad()
        loss = nll(a.softmax(0)) + PRIOR * (a - a.mean()).pow(2).mean()
        loss.backward()
        return loss

    with torch.no_grad():
        equal = float(nll(torch.full((M,), 1.0 / M)))
    opt.step(closure)
    weights = a.detach().softmax(0) * M
    with torch.no_grad():
        fitted = float(nll(weights))
        model.ensemble_weights.copy_(weights.to(model.ensemble_weights.device))
    names = ["fused", *model.schema.modalities()]
    return {"weights": {n: round(float(w), 4) for n, w in zip(names, weights)},
            "loss_equal": round(equal, 5), "loss_fitted": round(fitted, 5)}
