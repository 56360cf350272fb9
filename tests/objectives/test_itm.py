import torch

from polyfuse.objectives import Pretrainer, Step
from polyfuse.objectives.common import same_group, take
from polyfuse.objectives.itm import ITM, pair_rows

from .conftest import make_model


def swapped_columns(pairing, i):
    return [c for c, idx in pairing.index.items() if int(idx[i]) != i]


def test_negatives_swap_one_present_cell_and_only_rows_with_two_cells_are_asked():
    present = {"a": torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool),
               "b": torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool),
               "c": torch.tensor([0, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)}
    g = torch.Generator().manual_seed(0)
    negatives = 0
    for _ in range(200):
        p = pair_rows(present, generator=g)
        assert p.scored.tolist() == [True, False, True, False, True, True, True, True]
        for i in range(8):
            swapped = swapped_columns(p, i)
            if p.labels[i] == 1:
                assert swapped == []
                continue
            negatives += 1
            assert p.scored[i] and len(swapped) == 1          # one cell from elsewhere, the rest the row's own
            c = swapped[0]
            j = int(p.index[c][i])
            assert present[c][i] and present[c][j] and j != i  # a present cell swapped for another present cell
    assert 0.4 < negatives / (200 * 6) < 0.6                   # about half of the rows that can be asked


def test_hard_negatives_follow_similarity_either_way_round():
    present = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    sim = torch.full((4, 4), -50.0)
    hardest = torch.tensor([2, 3, 0, 1])
    sim[torch.arange(4), hardest] = 50.0
    sim.fill_diagonal_(100.0)                                  # the true cell itself is never drawn
    for seed in range(20):
        p = pair_rows(present, {("a", "b"): sim}, share=1.0, generator=torch.Generator().manual_seed(seed))
        assert (p.labels == 0).all()
        for i in range(4):
            (c,) = swapped_columns(p, i)
            assert int(p.index[c][i]) == int(hardest[i])       # sim[i, j] for b swapped, sim[j, i] for a
    uniform = torch.stack([pair_rows(present, {("a", "b"): sim}, 1.0, torch.Generator().manual_seed(s),
                                     hard_share=0.0).index["b"] for s in range(300)])
    drawn = uniform[:, 0][uniform[:, 0] != 0]
    assert len(set(drawn.tolist())) == 3


def test_rows_of_one_match_group_are_never_each_others_negatives():
    """pretrain.match_column: on a many-to-many pairing rows with the same value are true matches."""
    groups = torch.tensor([0, 0, 1, 1, 2, 0])
    present = {"a": torch.ones(6, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool)}
    exclude = same_group(groups, 6, "cpu")
    sim = {("a", "b"): torch.randn(6, 6) * 5}
    for seed in range(50):
        p = pair_rows(present, sim, 1.0, torch.Generator().manual_seed(seed), exclude)
        for i in range(6):
            for c in swapped_columns(p, i):
                assert groups[i] != groups[int(p.index[c][i])]
        assert (p.labels == 0).all()


def test_suspect_negatives_are_those_as_close_as_the_true_cell():
    present = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(3, dtype=torch.bool)}
    # Row 0's b-cell candidates: row 2 is as close as its own (suspect), row 1 far; rows 1, 2 only far ones.
    sim = torch.tensor([[1.0, -30.0, 1.0], [-30.0, 1.0, -30.0], [-30.0, -30.0, 1.0]])
    seen = set()
    for seed in range(40):
        p = pair_rows({"a": present["a"], "b": present["b"]}, {("a", "b"): sim}, 1.0,
                      torch.Generator().manual_seed(seed))
        flags = []
        for i in range(3):
            (c,) = swapped_columns(p, i)
            j = int(p.index[c][i])
            s = sim[i, j] if c == "b" else sim[j, i]
            flags.append(bool(s >= (sim[i, i])))
        assert abs(float(p.suspect) - sum(flags) / 3) < 1e-6
        seen.add(round(float(p.suspect), 3))
    assert len(seen) > 1


def test_itm_reads_the_joint_pass_of_the_repaired_rows(tiny):
    cfg, processors, batch = tiny
    model = make_model(cfg, processors).eval()                 # eval: encoder outputs are deterministic
    pre = Pretrainer(model, {"itm": ITM(32)})
    itm, drawn, fused_inputs = pre.objectives["itm"], [], []
    draw = itm.pair
    itm.pair = lambda step, state: drawn.append(draw(step, state)) or drawn[-1]
    model.fusion.register_forward_hook(lambda mod, args, out: fused_inputs.append(args[0]))
    out = pre(batch)
    assert {"itm_loss", "itm_accuracy"} <= set(out) and out["itm_loss"].requires_grad
    assert len(fused_inputs) == 1                              # ITM alone: one fused pass, the joint one
    (pairing,) = drawn
    clean = model.encode_columns(batch["inputs"])
    for c, e in fused_inputs[0].items():
        assert torch.allclose(e["tokens"], take(clean[c], pairing.index[c])["tokens"], atol=1e-6), c
    assert (pairing.labels == 0).any() and (pairing.labels == 1).any()
    assert any((idx != torch.arange(len(idx))).any() for idx in pairing.index.values())


def test_masked_targets_follow_the_cells_itm_swapped_in(tiny):
    """One joint pass for ITM and masked patch: a swapped-in image is reconstructed as itself."""
    from polyfuse.objectives.masked_patch import MaskedPatch, normalised, patchify
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    itm, mp = ITM(32, share=1.0), MaskedPatch(cfg, ["image", "audio"], 0.5)
    seen = {}
    real = mp.forward
    mp.forward = lambda model, step, state: seen.setdefault("step", step) and real(model, step, state)
    Pretrainer(model, {"itm": itm, "masked_patch": mp})(batch)
    step = seen["step"]
    index = step.pairing.index["image"]
    assert (index != torch.arange(len(index))).any()           # some images were swapped in
    pixels = batch["inputs"]["image"]["pixels"]
    expect = normalised(patchify(pixels[index], cfg.image.patch))
    assert torch.allclose(step.masked["masked_patch"]["targets"]["image"], expect)
    assert torch.equal(step.joint_inputs["image"]["pixels"], pixels[index])


def test_hard_negatives_come_in_as_contrastive_separates_the_pairs(tiny):
    """Separation (contrastive's in-batch top-1) is the share of negatives drawn by similarity."""
    cfg, processors, batch = tiny
    itm = ITM(32)
    step = Step(batch["inputs"], {})
    B = len(batch["inputs"]["image"]["present"])
    sim = torch.full((B, B), -50.0)
    hardest = (torch.arange(B) + 1) % B
    sim[torch.arange(B), hardest] = 50.0
    cols = list(batch["inputs"])
    sims = {(a, b): sim for i, a in enumerate(cols) for b in cols[i + 1:]}

    def hard_share(separation, skill=1.0):
        torch.manual_seed(0)
        itm.skill.fill_(skill)
        hits = total = 0
        for _ in range(30):
            p = itm.pair(step, {"similarity": sims, "separation": {k: separation for k in sims}})
            for i in range(B):
                for c in swapped_columns(p, i):
                    total += 1
                    hits += int(p.index[c][i]) in (int(hardest[i]), int((i - 1) % B))
        return hits / total
    assert hard_share(1.0) > 0.85                  # (a missing cell can leave no look-alike to draw)
    assert hard_share(0.0) < 0.3
    assert 0.35 < hard_share(0.5) < 0.75
    # Matching's own running accuracy caps it: at chance every negative is uniform, however well
    # contrastive separates the pairs (on emoji all-hard negatives kept ITM at chance).
    assert hard_share(1.0, skill=0.5) < 0.3
    assert 0.35 < hard_share(1.0, skill=0.75) < 0.75


def test_matching_skill_follows_its_training_accuracy_and_validation_asks_uniformly(tiny):
    """skill is an EMA of the training accuracy (a buffer: saved and resumed); in eval mode the
    negatives are uniform whatever the similarities, and per-row logits come back for the AUC."""
    cfg, processors, batch = tiny
    model = make_model(cfg, processors)
    itm = ITM(cfg.model.d_model)
    pre = Pretrainer(model, {"itm": itm})
    assert "objectives.itm.skill" in pre.encoder_state()
    torch.manual_seed(0)
    with torch.no_grad():
        itm.head.weight.zero_()
        itm.head.bias.fill_(5.0)             # says "match" to every row: right on positives only
        out = pre(batch)
    acc = float(out["itm_accuracy"])
    assert 0.0 < acc < 1.0
    assert abs(float(itm.skill) - (0.98 * 0.5 + 0.02 * acc)) < 1e-6
    pre.eval()
    step = Step(batch["inputs"], {})
    B = len(batch["inputs"]["image"]["present"])
    sims = {(a, b): torch.eye(B) * 100 for a in batch["inputs"] for b in batch["inputs"] if a < b}
    itm.skill.fill_(1.0)
    state = {"similarity": sims, "separation": {k: 1.0 for k in sims}}
    p = itm.pair(step, state)
    assert "itm_hard_share" not in state and p.suspect is None    # no similarity used in eval mode
    with torch.no_grad():
        got = pre(batch)
    assert got["itm_logits"].shape == got["itm_labels"].shape
    assert float(itm.skill) == 1.0                                  # eval steps do not move it
