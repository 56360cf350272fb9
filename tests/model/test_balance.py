"""Modality balance: unimodal losses and OGM act in training only and never change a prediction."""
import pytest
import torch

from polyfuse.model import scale_grad
from tests.model.test_model import build, encoded  # noqa: F401  (fixtures)


def test_balance_adds_no_weights_and_changes_no_prediction(build):
    plain, data, collate = build()
    balanced, _, _ = build(model={"aux_weight": 0.5, "ogm_alpha": 0.5, "dropout": 0.0})
    assert balanced.balanced and not plain.balanced
    assert balanced.state_dict().keys() == plain.state_dict().keys()
    balanced.load_state_dict(plain.state_dict())
    batch = collate(list(range(8)), data)
    with torch.no_grad():
        assert torch.equal(plain(batch)["logits"], balanced(batch)["logits"])
        assert torch.allclose(plain(batch)["loss"], balanced(batch)["loss"])   # eval: no unimodal term


def test_training_loss_adds_each_modality_alone(build):
    model, data, collate = build(model={"aux_weight": 0.5, "dropout": 0.0})
    batch = collate(list(range(16)), data)
    model.train()
    out = model(batch)
    aux = [out["balance"][f"aux_{m}_loss"] for m in ("text", "image", "audio")]
    fused = model.head.loss(out["logits"], batch["label"])
    assert out["loss"].item() == pytest.approx(fused.item() + 0.5 * torch.stack(aux).mean().item(), rel=1e-5)
    # Each unimodal loss is the loss of the row predicted with the other modalities absent, on
    # the rows that have the modality (the path `drop` takes in evaluation).
    model.eval()
    with torch.no_grad():
        only_image = model(batch, drop=("text", "audio"))
    assert out["balance"]["aux_image_loss"].item() == pytest.approx(only_image["loss"].item(), rel=1e-5)


def test_ogm_slows_only_the_modality_ahead(build):
    model, data, collate = build(model={"aux_weight": 0.5, "ogm_alpha": 1.0, "dropout": 0.0})
    model.train()
    out = model(collate(list(range(16)), data))
    factors = {m: float(out["balance"][f"ogm_{m}"]) for m in ("text", "image", "audio")}
    conf = {m: float(torch.exp(-out["balance"][f"aux_{m}_loss"])) for m in factors}
    behind = min(conf, key=conf.get)
    assert factors[behind] == 1.0 and all(0.0 < f <= 1.0 for f in factors.values())
    ahead = max(conf, key=conf.get)
    assert factors[ahead] <= min(factors.values()) + 1e-6


def test_scale_grad_scales_the_gradient_only():
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_grad(x, torch.tensor(0.25))
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.25))


def test_ensemble_is_the_mean_of_fused_and_unimodal_logits(build):
    plain, data, collate = build()
    ens, _, _ = build(model={"ensemble": True, "dropout": 0.0})
    ens.load_state_dict(plain.state_dict())
    batch = collate(list(range(8)), data)
    with torch.no_grad():
        parts = [plain(batch)["logits"]] + [plain(batch, drop=tuple(o for o in ("text", "image", "audio") if o != m))
                                            ["logits"] for m in ("text", "image", "audio")]
        has = [torch.ones(8, 1)] + [batch["inputs"][c]["present"].float()[:, None] if "present" in batch["inputs"][c]
                                    else batch["inputs"][c]["mask"].any(1).float()[:, None]
                                    for c in ("caption", "image", "audio")]
        want = sum(p * h for p, h in zip(parts, has)) / sum(has)
        assert torch.allclose(ens(batch)["logits"], want, atol=1e-5)
        # A row with one modality left (ablation) is that modality's prediction alone.
        only = ("text", "audio")
        assert torch.allclose(ens(batch, drop=only)["logits"], plain(batch, drop=only)["logits"], atol=1e-5)
    ens.train()
    torch.manual_seed(0)
    a = ens(batch)["logits"]
    plain.train()
    torch.manual_seed(0)
    assert torch.allclose(a, plain(batch)["logits"])       # training: the fused logits alone
