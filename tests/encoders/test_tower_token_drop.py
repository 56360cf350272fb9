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


def test_a_pooled_tower_gives_one_token_the_mean_of_its_outputs_and_padding_changes_nothing(tmp_path):
    """model.tower_pool: one token per row, proj(mean of the tower's real outputs); an absent row has none."""
    from polyfuse.config import Config
    from polyfuse.data.pretrained import TowerSource
    from polyfuse.encoders.pretrained import TowerEncoder
    from tests.encoders.conftest import write_bert
    bert = write_bert(tmp_path / "bert")
    cfg = Config.from_dict({"text": {"encoder": str(bert)},
                            "model": {"d_model": 16, "n_heads": 2, "freeze_encoders": True, "feature_cache": False,
                                      "tower_pool": True}})
    enc = TowerEncoder(cfg, "text", TowerSource(str(bert), True)).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 90, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    part = {"ids": ids, "mask": mask, "present": torch.tensor([True, True, False])}
    out = enc(part)
    assert out["tokens"].shape == (3, 1, 16) and out["mask"].tolist() == [[True], [True], [False]]
    h, m = enc.features(part)
    want = enc.proj((h[1, : int(m[1].sum())]).mean(0))
    assert torch.allclose(out["tokens"][1, 0], want, atol=1e-5)
    # The same row alone, without the padding its batch gave it: the same token.
    alone = {"ids": ids[1:2, :7], "mask": mask[1:2, :7], "present": torch.tensor([True])}
    assert torch.allclose(enc(alone)["tokens"][0, 0], out["tokens"][1, 0], atol=1e-5)
    # The tower's own states stay whole for a reader trained on them (generation's memory).
    assert out["features"].shape[:2] == (3, 12) and out["features_mask"][1].sum() == 7
