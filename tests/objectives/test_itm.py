import torch

from polyfuse.objectives import Pretrainer
from polyfuse.objectives.common import same_group
from polyfuse.objectives.itm import ITM, draw_negatives, matching_pairs, suspect_negatives

from .conftest import make_model


def test_pairs_labels_and_negatives_are_right():
    pa = torch.tensor([True, True, True, False, True, True])
    pb = torch.tensor([True, False, True, True, True, True])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ia, ib, labels = matching_pairs(pa, pb, generator=g)
        pos = labels == 1
        assert torch.equal(ia[pos], ib[pos]) and torch.equal(ia[pos], torch.tensor([0, 2, 4, 5]))
        neg_a, neg_b = ia[~pos], ib[~pos]
        assert (neg_a != neg_b).all()                          # a mismatched pair is never a row with itself
        assert pa[neg_a].all() and pb[neg_b].all()            # and never uses a missing cell
        assert len(neg_a) >= 4


def test_hard_negatives_follow_similarity():
    pa = pb = torch.ones(4, dtype=torch.bool)
    sim = torch.full((4, 4), -50.0)
    hardest = torch.tensor([2, 3, 0, 1])
    sim[torch.arange(4), hardest] = 50.0
    sim.fill_diagonal_(100.0)                                  # the positive itself is never drawn
    j = draw_negatives(pa, pb, sim, torch.Generator().manual_seed(0))
    assert torch.equal(j, hardest)
    uniform = torch.stack([draw_negatives(pa, pb, None, torch.Generator().manual_seed(s)) for s in range(200)])
    assert (uniform != torch.arange(4)).all() and len(set(uniform[:, 0].tolist())) == 3


def test_itm_objective_one_loss_per_pair(tiny):
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    out = Pretrainer(model, {"itm": ITM(32)})(batch)
    assert {"itm_caption_image_loss", "itm_caption_audio_loss", "itm_image_audio_loss"} <= set(out)
    assert out["itm_loss"].requires_grad


def test_rows_of_one_match_group_are_never_each_others_negatives():
    """pretrain.match_column: on a many-to-many pairing rows with the same value are true matches."""
    groups = torch.tensor([0, 0, 1, 1, 2, 0])
    pa = pb = torch.ones(6, dtype=torch.bool)
    exclude = same_group(groups, 6, "cpu")
    sim = torch.randn(6, 6) * 5
    for seed in range(50):
        j = draw_negatives(pa, pb, sim, torch.Generator().manual_seed(seed), exclude)
        ok = j >= 0
        assert (groups[ok] != groups[j[ok]]).all()
        ia, ib, labels = matching_pairs(pa, pb, sim, torch.Generator().manual_seed(seed), exclude)
        neg = labels == 0
        assert (groups[ia[neg]] != groups[ib[neg]]).all() and neg.sum() == 6


def test_suspect_negatives_flags_negatives_as_close_as_the_true_pair():
    pa = pb = torch.ones(3, dtype=torch.bool)
    sim = torch.tensor([[1.0, 0.9, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ia, ib, labels = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2, 2, 0]), torch.tensor([1, 1, 1, 0, 0.0])
    # (0, 2): sim 1.0 >= sim[0, 0] -> suspect; (1, 0): sim 0.0 below both diagonals -> not.
    assert float(suspect_negatives(ia, ib, labels, sim, pa, pb)) == 0.5
