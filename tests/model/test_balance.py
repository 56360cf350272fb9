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
    ens.load_state_dict(plain.state_dict(), strict=False)      # all but the ensemble's weights (equal)
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


def test_ensemble_weights_weigh_the_members(build):
    """Weights (0, 0, 1, 0) predict with the image alone; any weights give the weighted mean."""
    plain, data, collate = build()
    ens, _, _ = build(model={"ensemble": True, "dropout": 0.0})
    ens.load_state_dict(plain.state_dict(), strict=False)
    batch = collate(list(range(8)), data)
    mods = ("text", "image", "audio")
    with torch.no_grad():
        ens.ensemble_weights.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))
        only_image = plain(batch, drop=("text", "audio"))["logits"]
        has_image = _has(batch, "image")
        assert torch.allclose(ens(batch)["logits"][has_image], only_image[has_image], atol=1e-5)
        w = torch.tensor([0.5, 2.0, 1.0, 0.25])
        ens.ensemble_weights.copy_(w)
        parts = [plain(batch)["logits"]] + [plain(batch, drop=tuple(o for o in mods if o != m))["logits"] for m in mods]
        has = [torch.ones(8)] + [_has(batch, c).float() for c in ("caption", "image", "audio")]
        want = sum(wi * p * h[:, None] for wi, p, h in zip(w, parts, has)) / sum(wi * h for wi, h in zip(w, has))[:, None]
        assert torch.allclose(ens(batch)["logits"], want, atol=1e-5)


def test_fit_ensemble_trusts_the_member_that_is_right_on_held_out_rows(build):
    """Rows labelled by the audio-alone prediction: fitting gives audio the largest weight, and
    the fitted ensemble's held-out loss is below the plain mean's."""
    from polyfuse.training.ensemble import fit_ensemble
    ens, data, collate = build(model={"ensemble": True, "dropout": 0.0})
    rows = list(range(len(data)))
    with torch.no_grad():
        audio_says = ens(collate(rows, data), drop=("text", "image"))["logits"].argmax(-1)

    def relabelled(idx, d):
        batch = collate(idx, d)
        return {**batch, "label": audio_says[idx]}
    fitted = fit_ensemble(ens, data, relabelled, 16, "cpu")
    w = fitted["weights"]
    assert max(w, key=w.get) == "audio", w
    assert fitted["loss_fitted"] < fitted["loss_equal"]
    assert ens.ensemble_weights.tolist() == pytest.approx(list(w.values()), abs=1e-3)
    assert sum(w.values()) == pytest.approx(4.0, abs=1e-3)


def _has(batch, column):
    part = batch["inputs"][column]
    return part["present"].bool() if "present" in part else part["mask"].any(1)


def test_training_fits_and_saves_the_ensemble_weights(synth, tmp_path):
    """train_run fits the weights on the validation rows; the saved run predicts with them, and
    its validation metrics are those of the fitted ensemble."""
    import numpy as np

    from polyfuse.inference import Predictor
    from polyfuse.recipes.train import train_run
    from tests.conftest import tiny_config
    cfg = tiny_config(model={"ensemble": True, "aux_weight": 0.5}, train={"epochs": 1})
    predictor, summary = train_run(cfg, synth["train"], synth["val"], tmp_path / "run", progress=False)
    weights = list(summary["ensemble"]["weights"].values())
    assert len(weights) == 4 and weights != pytest.approx([1.0] * 4, abs=1e-3)
    loaded = Predictor.load(tmp_path / "run")
    assert loaded.model.ensemble_weights.tolist() == pytest.approx(weights, abs=1e-3)
    test = loaded.encode(loaded.read(synth["test"]))
    a, b = predictor.head_outputs(test), loaded.head_outputs(test)
    np.testing.assert_allclose(a, b, atol=1e-5)
    predictor.model.ensemble_weights.fill_(1.0)                   # the plain mean predicts otherwise
    assert np.abs(predictor.head_outputs(test) - b).max() > 1e-3
    assert summary["val_metrics"]["accuracy"] == pytest.approx(
        float((np.array(loaded.predict(loaded.encode(loaded.read(synth["val"]))).labels, dtype=str)
               == loaded.read(synth["val"]).df["label"].astype(str).to_numpy()).mean()), abs=1e-6)
