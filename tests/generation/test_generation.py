"""Generation: fused tokens as a decoder's prefix. A tiny random Llama (conftest) and images of a
coloured square on the left or right, captioned with its colour and side."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polyfuse.generation.model import left_pack

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_scenes(folder, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour, side = rng.choice(list(COLOURS)), rng.choice(["left", "right"])
        img = np.full((16, 16, 3), 255, np.uint8)
        x0 = int(rng.integers(0, 3)) + (0 if side == "left" else 9)
        y0 = int(rng.integers(2, 8))
        img[y0:y0 + 6, x0:x0 + 6] = COLOURS[colour]
        path = folder / f"s{seed}_{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": str(path), "note": "the " + " ".join(["small"] * int(rng.integers(1, 4))),
                     "caption": f"a {colour} square on {side}"})
    return pd.DataFrame(rows)


def cfg_for(llama, **generate):
    from polyfuse.config import Config
    return Config.from_dict({
        "schema": {"image": ["image"], "text": ["note"], "label": "caption", "task": "generation"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "text": {"vocab_size": 60, "max_length": 8},
        "image": {"size": 16, "patch": 4},
        "train": {"epochs": 40, "batch_size": 8, "lr": 3e-3, "patience": None, "val_fraction": 0.0},
        # The tiny llama is random, not pretrained: trained whole, it learns at the full rate.
        "generate": {"decoder": str(llama), "max_new_tokens": 8, "decoder_lr_scale": 1.0, **generate}})


def test_left_pack_keeps_order_and_moves_padding_first():
    s = torch.arange(12.0).reshape(2, 6, 1)
    m = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    packed, pm = left_pack(s, m)
    assert packed[0, :, 0].tolist() == [0, 0, 0, 0, 2, 3] and pm[0].tolist() == [False] * 3 + [True] * 3
    assert torch.equal(packed[1], s[1]) and pm[1].all()


def test_the_resampler_reads_real_tokens_only_and_gives_k_positions():
    """K queries over (B, T, D): padding changes nothing; a row with no token gets no positions."""
    from polyfuse.generation.model import Resampler
    torch.manual_seed(0)
    r = Resampler(8, 3, 2).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).bool()
    out, out_mask = r(x, mask)
    assert out.shape == (3, 3, 8) and out_mask.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    assert torch.isfinite(out).all()
    y = x.clone()
    y[0, 3:] = 100.0                                           # padded positions: anything
    assert torch.allclose(r(y, mask)[0][0], out[0], atol=1e-6)
    alone, _ = r(x[:1, :3], mask[:1, :3])                      # the same row without its padding
    assert torch.allclose(alone[0], out[0], atol=1e-6)


def test_a_resampled_prefix_learns_to_caption(tmp_path, llama):
    """generate.prefix_tokens: the decoder reads K positions, and still learns the captions."""
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    train = write_scenes(tmp_path, 96, seed=0)
    gen, _ = train_generation(cfg_for(llama, decoder_train="full", prefix_tokens=4), train, out=tmp_path / "run",
                              progress=False)
    data = gen.encode(gen.read(train.iloc[:4]))
    gen.model.eval()
    with torch.no_grad():
        prefix, pmask = gen.model.prefix(gen.processors.collate(data.inputs[:4]))
    assert prefix.shape[1] == 4 and pmask.all()
    test = write_scenes(tmp_path, 24, seed=1)
    texts = gen.generate(gen.encode(gen.read(test)))
    assert np.mean([t == c for t, c in zip(texts, test["caption"])]) >= 0.8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama):
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen")
    train = write_scenes(root, 96, seed=0)
    gen, summary = train_generation(cfg_for(llama, decoder_train="full"), train, out=root / "run", progress=False)
    return gen, summary, train, root


def test_learns_to_caption_and_reloads_to_the_same_text(trained, llama):
    from polyfuse.generation.run import Generator
    gen, summary, train, root = trained
    test = write_scenes(root, 24, seed=1)                         # scenes never trained on
    data = gen.encode(gen.read(test))
    texts = gen.generate(data)
    exact = np.mean([t == c for t, c in zip(texts, test["caption"])])
    assert exact >= 0.8, list(zip(texts, test["caption"]))[:6]
    again = Generator.load(root / "run")
    assert again.generate(again.encode(again.read(test))) == texts


def test_a_rows_text_does_not_depend_on_its_batch(trained):
    """Rows with 1-3 note words have prefixes of different lengths: padding must change nothing."""
    gen, _, train, root = trained
    data = gen.encode(gen.read(train.iloc[:12]))
    together = gen.generate(data, batch_size=12)
    alone = gen.generate(data, batch_size=1)
    assert together == alone
    lengths = {int(x["note"]["ids"].numel()) for x in data.inputs}
    assert len(lengths) > 1


def test_api_cli_and_evaluate_agree(trained, tmp_path):
    import polyfuse
    from polyfuse.cli.main import main
    gen, _, train, root = trained
    test = write_scenes(root, 10, seed=2)
    test.to_csv(tmp_path / "test.csv", index=False)
    api = list(polyfuse.load(root / "run").predict(test))
    main(["predict", str(root / "run"), "--data", str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv")])
    cli = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)["generated"].tolist()
    assert cli == api == gen.generate(gen.encode(gen.read(test)))
    main(["evaluate", str(root / "run"), "--data", str(tmp_path / "test.csv"), "--out", str(tmp_path / "m.json")])
    import json
    m = json.loads((tmp_path / "m.json").read_text())
    exact = np.mean([a == c for a, c in zip(api, test["caption"])])
    assert m["exact_match"] == pytest.approx(exact) and m["n"] == 10 and {"cider", "bleu4", "wer"} <= set(m)


@pytest.mark.parametrize("how", ["frozen", "lora"])
def test_a_frozen_decoder_stays_as_it_was(tmp_path, llama, how):
    """frozen: only the encoders and projector train; lora: the decoder's own weights stay too."""
    from transformers import AutoModelForCausalLM
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    cfg = cfg_for(llama, decoder_train=how)
    cfg.train.epochs = 2
    gen, _ = train_generation(cfg, write_scenes(tmp_path, 16, seed=3), out=tmp_path / "run", progress=False)
    original = AutoModelForCausalLM.from_pretrained(str(llama)).state_dict()
    trained = {k.replace("base_layer.", ""): v for k, v in gen.model.lm.state_dict().items() if "lora_" not in k}
    for k, v in original.items():
        assert torch.equal(trained[k], v), k
    lora = [n for n, p in gen.model.lm.named_parameters() if p.requires_grad]
    assert (len(lora) > 0) == (how == "lora") and all("lora_" in n for n in lora)


def test_validation_scores_sit_beside_the_nearest_neighbour_baseline(tmp_path, llama):
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    cfg = cfg_for(llama, decoder_train="full")
    cfg.train.epochs = 4
    _, summary = train_generation(cfg, write_scenes(tmp_path, 24, seed=4), write_scenes(tmp_path, 8, seed=5),
                                  out=tmp_path / "run", progress=False)
    m = summary["val_metrics"]
    assert m["n"] == 8 and m["nearest_neighbour"]["n"] == 8
    assert 0.0 <= m["nearest_neighbour"]["exact_match"] <= 1.0
    from polyfuse.runfolder import RunFolder
    folder = RunFolder(tmp_path / "run")
    log = folder.log()
    assert all("val_loss" in r and 0.0 <= r["val_token_accuracy"] <= 1.0 for r in log)
    # The weights kept are the epoch with the most target tokens right (ties: the lower loss).
    best = max(log, key=lambda r: (r["val_token_accuracy"], -r["val_loss"]))
    assert folder.meta().info["epoch"] == best["epoch"]


def test_teacher_forced_tokens_are_all_right_exactly_where_greedy_writes_the_reference(trained):
    """The validation score counts the argmax given the true tokens before: greedy decoding
    follows the reference to its end exactly when every one of them is right."""
    gen, _, train, root = trained
    rows = write_scenes(root, 16, seed=6)
    swap = {"left": "right", "right": "left"}
    rows.loc[:7, "caption"] = [f"{c.rsplit(' ', 1)[0]} {swap[c.rsplit(' ', 1)[1]]}" for c in rows.caption[:8]]
    data = gen.encode(gen.read(rows), with_targets=True)
    texts = gen.generate(data)
    whole = []
    with torch.no_grad():
        for i in range(len(data)):
            out = gen.model(gen.collate([i], data))
            whole.append(out["correct"] == out["tokens"])
    assert whole == [t == c for t, c in zip(texts, rows.caption)]
    assert 0 < sum(whole) < len(whole)                  # both kinds of row are there


def test_the_report_shows_inputs_references_and_generations_best_first(trained, tmp_path):
    import re
    from polyfuse.cli.main import main
    gen, _, train, root = trained
    test = write_scenes(root, 14, seed=6)
    test.loc[0, "caption"] = "a big star on top"                # one row the model cannot get right
    test.to_csv(tmp_path / "test.csv", index=False)
    assert main(["evaluate", str(root / "run"), "--data", str(tmp_path / "test.csv"), "--out",
                 str(tmp_path / "m.json"), "--report"]) == 0
    html = (tmp_path / "report.html").read_text()
    assert 'id="best"' in html and 'id="worst"' in html and "CIDEr" in html
    assert html.count('class="thumb"') >= 7 and "data:image/png;base64," in html
    best, worst = html.split('id="worst"')
    scores = lambda part: [float(x) for x in re.findall(r"ROUGE-L (\d\.\d\d)", part)]   # noqa: E731
    assert min(scores(best)) >= max(scores(worst))
    assert "a big star on top" in worst and "row 0 " in worst       # the impossible row is among the worst
    generated = gen.generate(gen.encode(gen.read(test.iloc[:1])))[0]
    assert f"generated <b>{generated}</b>" in worst


def write_questions(folder, n, seed):
    """Scenes with a question only the decoder's prompt sees: 'red green blue' asks the colour,
    'left right' the side; the image alone cannot say which answer is wanted."""
    scenes = write_scenes(folder, n, seed)
    rng = np.random.default_rng(seed + 100)
    asks_colour = rng.random(n) < 0.5
    scenes["question"] = np.where(asks_colour, "red green blue", "left right")
    colour = scenes["caption"].str.split().str[1]
    side = scenes["caption"].str.split().str[-1]
    scenes["answer"] = np.where(asks_colour, colour, side)
    return scenes


def test_the_prompt_reaches_the_decoder_and_decides_the_answer(tmp_path, llama):
    from polyfuse.config import Config
    from polyfuse.errors import InputError
    from polyfuse.generation.run import Generator
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    cfg = Config.from_dict({
        "schema": {"image": ["image"], "label": "answer", "task": "generation"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "image": {"size": 16, "patch": 4},
        "train": {"epochs": 40, "batch_size": 8, "lr": 3e-3, "patience": None, "val_fraction": 0.0},
        "generate": {"decoder": str(llama), "max_new_tokens": 4, "decoder_train": "full", "decoder_lr_scale": 1.0,
                     "prompt": "{question}"}})
    # 160 rows: with 96 it learned the side question only just (0.79-0.83 as float rounding moved)
    train_generation(cfg, write_questions(tmp_path, 160, seed=0), out=tmp_path / "run", progress=False)
    gen = Generator.load(tmp_path / "run")
    test = write_questions(tmp_path, 24, seed=1)                  # unseen scenes, both questions
    texts = gen.generate(gen.encode(gen.read(test)))
    exact = np.mean([t == a for t, a in zip(texts, test["answer"])])
    assert exact >= 0.8, list(zip(test["question"], texts, test["answer"]))[:6]
    # The same image, the other question: the other answer.
    swapped = test.assign(question=np.where(test["question"] == "left right", "red green blue", "left right"))
    other = gen.generate(gen.encode(gen.read(swapped)))
    assert np.mean([a != b for a, b in zip(texts, other)]) >= 0.8
    with pytest.raises(InputError, match="question"):
        gen.encode(gen.read(test.drop(columns=["question"])))
    # The server fills the prompt from each request row's `question`, as predict does from the table.
    import anyio
    from .test_serve_generate import app_for, rows_of
    from ..serving.conftest import client_for

    async def served(table):
        async with client_for(app_for(tmp_path / "run")) as client:
            rows = [{**r, "question": q} for r, q in zip(rows_of(table.assign(note="")), table["question"])]
            answer = await client.post("/v1/generate", json=[{k: v for k, v in r.items() if k != "note"} for r in rows])
            missing = await client.post("/v1/generate", json={"image": rows[0]["image"], "colour": "red"})
        return [g["text"] for g in answer.json()["generated"]], missing
    got, missing = anyio.run(served, test)
    assert got == texts
    assert missing.status_code == 422 and "question" in missing.text     # unknown key: the error lists the prompt's
    assert anyio.run(served, swapped)[0] == other


def test_a_scratch_decoder_learns_its_vocabulary_from_the_targets_and_reloads(tmp_path):
    """--decoder scratch: no language model folder at all; the tokenizer comes from the captions."""
    from polyfuse.generation.run import Generator
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    cfg = cfg_for("scratch")                                     # decoder_train stays 'frozen': ignored
    cfg.text.vocab_size = 60
    gen, _ = train_generation(cfg, write_scenes(tmp_path, 96, seed=0), out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "processors" / "decoder" / "tokenizer.json").exists()
    again = Generator.load(tmp_path / "run")
    test = write_scenes(tmp_path, 24, seed=1)
    texts = again.generate(again.encode(again.read(test)))
    assert np.mean([t == c for t, c in zip(texts, test["caption"])]) >= 0.8, list(zip(texts, test["caption"]))[:6]
    assert texts == gen.generate(gen.encode(gen.read(test)))


def test_two_stages_train_the_projector_first_then_the_decoders_adapters(tmp_path, llama, monkeypatch):
    """generate.first_stage: LLaVA's two stages in one run, on the one trainer."""
    from polyfuse.generation.model import GenerationModel
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    seen = []                       # (stage on?, LoRA weights, projector weights) at each epoch's start
    original = GenerationModel.train_decoder

    def record(self, on):
        original(self, on)
        lora = {n: p.detach().clone() for n, p in self.lm.named_parameters() if "lora_" in n}
        seen.append((self.decoder_trains, lora, [p.detach().clone() for p in self.projector.parameters()]))
    monkeypatch.setattr(GenerationModel, "train_decoder", record)
    cfg = cfg_for(llama, decoder_train="lora", first_stage=0.34)
    cfg.train.epochs = 3
    gen, _ = train_generation(cfg, write_scenes(tmp_path, 16, seed=3), out=tmp_path / "run", progress=False)
    stages = [on for on, _, _ in seen[1:]]            # seen[0]: the model's construction
    assert stages == [False, True, True]              # round(0.34 * 3) = 1 epoch of stage 1
    _, lora0, proj0 = seen[1]
    _, lora1, proj1 = seen[2]
    assert lora0 and all(torch.equal(lora0[n], lora1[n]) for n in lora0)          # stage 1: adapters untouched
    assert not all(torch.equal(a, b) for a, b in zip(proj0, proj1))                # ... while the projector learns
    final = dict(gen.model.lm.named_parameters())
    assert any(not torch.equal(lora1[n], final[n]) for n in lora1)                 # stage 2: adapters learn


@pytest.mark.parametrize("task, decoder_train, tower_lora", [("generation", "lora", False),
                                                              ("classification", "frozen", True)])
def test_lora_flag_adapts_the_decoder_of_a_generation_run_and_the_towers_otherwise(task, decoder_train, tower_lora):
    from polyfuse.cli.main import build_parser
    from polyfuse.cli.train import config_from_args
    args = build_parser().parse_args(["train", "--train", "t.csv", "--label", "y", "--task", task, "--lora",
                                      "--text", "q", "--text-encoder", "some/tower", "--decoder", "some/lm", "--out", "r"])
    cfg, _ = config_from_args(args)
    assert cfg.generate.decoder_train == decoder_train and bool(cfg.model.lora) == tower_lora
