import math

import pytest
import torch

import dataclasses

from polyfuse.config import PretrainConfig
from polyfuse.objectives import Pretrainer, Step, build_objectives, resolve_objectives
from polyfuse.objectives import mlm as mlm_module
from polyfuse.objectives.contrastive import Contrastive, info_nce
from polyfuse.objectives.masked_patch import masked_mse, patchify
from polyfuse.objectives.mlm import IGNORE, MLM, mask_tokens

from .conftest import make_model


def with_pretrain(cfg, **pretrain):
    return resolve_objectives(dataclasses.replace(cfg, pretrain=PretrainConfig(**pretrain)))


@pytest.mark.parametrize("name", ["contrastive", "itm", "mlm", "masked_patch"])
def test_each_objective_loss_falls(tiny, matched, name):
    # ITM on the tiny table could only memorise (its image says nothing of the other cells).
    cfg, processors, batch = matched if name == "itm" else tiny
    model = make_model(cfg, processors)
    cfg = with_pretrain(cfg, objectives=[name])
    pre = Pretrainer(model, build_objectives(cfg, model, processors))
    opt = torch.optim.AdamW(pre.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    # ITM sees each row as one matching question a step (about half negatives): it needs more steps.
    for _ in range(150 if name == "itm" else 60):
        out = pre(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out[f"{name}_loss"].detach()))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.85 * first, (name, losses)


def test_weights_combine_and_each_loss_is_reported(tiny):
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    cfg = with_pretrain(cfg, weights={"mlm": 2.0, "itm": 0.0})
    assert cfg.pretrain.objectives == ["contrastive", "itm", "mlm", "masked_patch"]
    pre = Pretrainer(model, build_objectives(cfg, model, processors), cfg.pretrain.weights)
    torch.manual_seed(0)
    out = pre(batch)
    expected = out["contrastive_loss"] + 2.0 * out["mlm_loss"] + out["masked_patch_loss"]
    assert torch.allclose(out["loss"], expected)
    assert {"contrastive_caption_image_loss", "itm_accuracy", "masked_patch_audio_loss"} <= set(out)


def test_info_nce_equals_hand_computed_value():
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * za @ zb.T = [[2, 1.2], [0, 1.6]]
    rows = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    cols = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = 0.5 * (rows / 2 + cols / 2)
    assert float(info_nce(za, zb, 2.0)) == pytest.approx(expected, abs=1e-6)


def test_contrastive_module_on_fixed_batch_skips_rows_missing_a_modality():
    obj = Contrastive(8, [("img", "image"), ("wav", "audio")], proj_dim=4, temperature=0.5)
    emb = {"img": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
           "wav": torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])}
    pres = {"img": torch.tensor([True, True, True]), "wav": torch.tensor([True, True, False])}
    obj.column_vector = lambda model, col, part, encoded: (emb[col], pres[col])
    out = obj(None, Step({"img": {}, "wav": {}}, {"img": {}, "wav": {}}), {})
    # Row 2 has no audio: only rows 0 and 1 are contrasted, at scale 1 / 0.5 = 2 (the value above).
    rows = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    cols = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    assert float(out["contrastive_loss"]) == pytest.approx(0.5 * (rows + cols) / 2, abs=1e-5)
    assert float(out["temperature"]) == pytest.approx(0.5)


def test_mask_tokens_80_10_10_on_real_positions_only():
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50))
    real = torch.arange(50)[None, :] < torch.randint(1, 51, (400, 1))
    new, labels = mask_tokens(ids, real, 0.15, mask_id=4, vocab_size=1000, first_normal_id=5)
    chosen = labels != IGNORE
    assert not (chosen & ~real).any()
    assert (chosen.sum(1) >= 1).all()                       # every row with text has a target
    assert abs(chosen.sum() / real.sum() - 0.15) < 0.02
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(new[~chosen], ids[~chosen])
    as_mask = (new[chosen] == 4).float().mean()
    kept = (new[chosen] == ids[chosen]).float().mean()
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03   # the rest: random ids


def test_mlm_scores_only_masked_positions(tiny, monkeypatch):
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    seen = {}
    real_mask_tokens = mlm_module.mask_tokens

    def spy(*a, **k):
        new, labels = real_mask_tokens(*a, **k)
        seen["targets"] = int((labels != IGNORE).sum())
        return new, labels

    monkeypatch.setattr(mlm_module, "mask_tokens", spy)
    obj = MLM(32, processors.text.vocab_size, processors.text.mask_id, 5, 0.15)
    real_logits = obj.logits
    obj.logits = lambda h, m: seen.setdefault("rows", h.shape[0]) and real_logits(h, m)
    Pretrainer(model, {"mlm": obj})(batch)
    assert seen["rows"] == seen["targets"] > 0


def test_masked_mse_scores_only_selected_positions():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    sel = torch.tensor([[True, False, False, True, False], [False, False, True, False, False]])
    base = masked_mse(pred, target, sel)
    changed = pred.clone()
    changed[~sel] += 10.0
    assert torch.allclose(masked_mse(changed, target, sel), base)
    changed[0, 0] += 1.0
    assert not torch.allclose(masked_mse(changed, target, sel), base)


def test_masked_patch_hides_content_and_scores_only_hidden(tiny):
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    obj = build_objectives(with_pretrain(cfg, objectives=["masked_patch"]), model, processors)["masked_patch"]
    part = batch["inputs"]["image"]
    corrupted, targets, hidden = obj.corrupt_part(part)
    p = cfg.image.patch
    before, after = patchify(part["pixels"], p), patchify(corrupted["pixels"], p)
    assert (after[hidden] == 0).all() and torch.equal(after[~hidden], before[~hidden])
    assert torch.allclose(hidden.float().mean(1), torch.full((len(hidden),), 0.5))
    audio = batch["inputs"]["audio"]
    _, _, hidden_a = obj.corrupt_part(audio)
    assert not (hidden_a & ~audio["mask"][:, :: cfg.audio.frames_per_token]).any()   # never padding
    assert not hidden_a[~audio["mask"].any(1)].any()                                  # nor absent rows


@pytest.mark.parametrize("change, message", [
    ({"model": {"fusion": "concat"}, "pretrain": {"objectives": ["mlm"]}}, "fused token sequence"),
    ({"schema": {"text": ["caption"], "image": [], "audio": []}, "pretrain": {"objectives": ["contrastive"]}},
     "needs 2 input columns"),
    ({"schema": {"text": [], "image": ["image"], "audio": []}, "pretrain": {"objectives": ["mlm"]}},
     "needs a text column"),
    ({"pretrain": {"objectives": ["mlm"], "weights": {"itm": 1.0}}}, "not run"),
    ({"pretrain": {"objectives": ["mlm"], "match_column": "label"}}, "match_column"),
])
def test_objectives_are_checked_against_the_config_before_training(change, message):
    from polyfuse.errors import ConfigError
    from tests.conftest import tiny_config
    with pytest.raises(ConfigError, match=message):
        resolve_objectives(tiny_config(**change))


def test_a_text_tower_cannot_train_mlm(tmp_path):
    from polyfuse.objectives import why_not
    from tests.conftest import tiny_config
    cfg = tiny_config(text={"encoder": str(tmp_path / "bert")})
    assert "Polyfuse's own encoder" in why_not("mlm", cfg)
    assert why_not("contrastive", cfg) is None
    # Left to the columns, the objectives are the ones that fit.
    assert resolve_objectives(cfg).pretrain.objectives == ["contrastive", "itm", "masked_patch"]


def test_pretraining_one_step_runs_each_encoder_once_on_clean_and_once_on_corrupted_input(tiny):
    """Contrastive and ITM reuse the clean encoder outputs; ITM, MLM and masked_patch share one joint pass."""
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    cfg = with_pretrain(cfg)
    pre = Pretrainer(model, build_objectives(cfg, model, processors))
    calls = {m: 0 for m in model.encoders}
    for m, enc in model.encoders.items():
        enc.register_forward_hook(lambda mod, args, out, m=m: calls.__setitem__(m, calls[m] + 1))
    pre(batch)
    assert calls == {"text": 2, "image": 2, "audio": 2}
