"""model.tower_token_drop: a tower's output tokens left out of training rows (feature-space patch dropout)."""
import torch

from polyfuse.encoders.pretrained import drop_tokens


def test_drop_tokens_keeps_the_asked_share_of_real_tokens_and_never_none():
    torch.manual_seed(0)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    for i, n in enumerate([10, 7, 2, 1]):
        mask[i, :n] = True
    out = drop_tokens(mask, 0.5)
    assert not (out & ~mask).any()                       # padding stays padding
    assert out.sum(1).tolist() == [5, 4, 1, 1]           # round(n / 2), at least one
    assert drop_tokens(mask, 0.9).sum(1).min() == 1
    # Different rows and calls drop different tokens (random, from the global RNG).
    a, b = drop_tokens(mask, 0.5), drop_tokens(mask, 0.5)
    assert not torch.equal(a, b)
    torch.manual_seed(1)
    c = drop_tokens(mask, 0.5)
    torch.manual_seed(1)
    assert torch.equal(c, drop_tokens(mask, 0.5))


def test_a_tower_drops_tokens_only_in_training(tmp_path):
    from polyfuse.config import Config
    from polyfuse.data.pretrained import TowerSource
    from polyfuse.encoders.pretrained import TowerEncoder
    from tests.encoders.conftest import write_bert
    bert = write_bert(tmp_path / "bert")
    cfg = Config.from_dict({"text": {"encoder": str(bert)},
                            "model": {"d_model": 16, "n_heads": 2, "freeze_encoders": True, "feature_cache": False,
                                      "tower_token_drop": 0.5}})
    enc = TowerEncoder(cfg, "text", TowerSource(str(bert), True))
    ids = torch.randint(5, 90, (3, 12))
    part = {"ids": ids, "mask": torch.ones(3, 12, dtype=torch.bool), "present": torch.ones(3, dtype=torch.bool)}
    enc.train()
    assert enc(part)["mask"].sum(1).tolist() == [6, 6, 6]
    enc.eval()
    assert enc(part)["mask"].all()
