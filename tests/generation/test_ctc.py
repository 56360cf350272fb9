"""generate.ctc: a CTC loss on the audio column's tokens beside the next-token loss (hybrid
CTC/attention). Clips are 1-3 tones, one word per tone (test_seq2seq.write_clips); encoders and
decoder are trained from nothing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from polyfuse.errors import ConfigError

from .test_generation import write_scenes
from .test_seq2seq import write_clips


def cfg_for(ctc: float, **schema):
    from polyfuse.config import Config
    return Config.from_dict({
        "schema": {"audio": ["audio"], "label": "text", "task": "generation", **schema},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
        "text": {"vocab_size": 60},
        "audio": {"max_seconds": 1.0, "n_mels": 16, "stem": "conv"},
        "train": {"epochs": 30, "batch_size": 8, "lr": 3e-3, "patience": None, "val_fraction": 0.0},
        "generate": {"decoder": "scratch", "max_new_tokens": 6, "ctc": ctc}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from polyfuse.recipes.generate import train_generation
    tmp = tmp_path_factory.mktemp("ctc")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen, _ = train_generation(cfg_for(1.0), write_clips(tmp, 96, seed=0), out=tmp / "run", progress=False)
    return gen, tmp


def ctc_greedy(model, inputs: dict) -> list[list[int]]:
    """The CTC head's best path per row: argmax per token, repeats merged, blanks dropped."""
    logits, mask = model.ctc_logits(*model.read(inputs))                   # (B, T, V + 1), (B, T)
    blank = logits.shape[-1] - 1
    out = []
    for best, n in zip(logits.argmax(-1).tolist(), mask.sum(1).tolist()):
        path = [t for i, t in enumerate(best[:n]) if t != blank and (i == 0 or t != best[i - 1])]
        out.append(path)
    return out


def test_the_ctc_head_learns_where_each_word_is_and_the_decoder_transcribes(trained):
    from polyfuse.generation.run import Generator
    gen, tmp = trained
    test = write_clips(tmp, 24, seed=1)
    data = gen.encode(gen.read(test))
    gen.model.eval()
    with torch.no_grad():
        paths = ctc_greedy(gen.model, gen.collate(list(range(len(test))), data)["inputs"])
    truth = [gen.targets.encode(t)[:-1].tolist() for t in test["text"]]          # without end-of-text
    assert np.mean([p == t for p, t in zip(paths, truth)]) >= 0.8, list(zip(paths, truth))[:6]
    texts = gen.generate(data)
    assert np.mean([t == c for t, c in zip(texts, test["text"])]) >= 0.8, list(zip(texts, test["text"]))[:6]
    again = Generator.load(tmp / "run")                                    # the CTC head is saved with the run
    assert again.generate(again.encode(again.read(test))) == texts
    # Both losses are logged; the CTC term fell; validation (none here) would read the next-token loss.
    log = [json.loads(line) for line in (tmp / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["ctc"] < 0.5 * log[0]["ctc"]


def test_a_rows_ctc_loss_does_not_depend_on_its_batch_and_rows_without_audio_add_nothing(trained):
    gen, tmp = trained
    test = write_clips(tmp, 6, seed=2)                      # 1-3 tones: different lengths, different padding
    data = gen.encode(gen.read(test))
    gen.model.eval()

    def ctc(rows, without_audio=()):
        batch = gen.collate(rows, data)
        batch["target"] = gen.targets.collate([gen.targets.encode(test["text"][i]) for i in rows])
        for key in ("mask", "present"):                                      # as a row lacking the clip
            batch["inputs"]["audio"][key][list(without_audio)] = False
        return gen.model(batch)["ctc"]

    with torch.no_grad():
        alone = torch.stack([ctc([i]) for i in range(6)])
        torch.testing.assert_close(ctc(list(range(6))), alone.mean())
        torch.testing.assert_close(ctc([2, 3], without_audio=[1]), alone[2])
        assert float(ctc([3], without_audio=[0])) == 0.0


def test_ctc_needs_exactly_one_audio_column(tmp_path):
    from polyfuse.config import Config
    from polyfuse.recipes.generate import train_generation
    scenes = write_scenes(tmp_path, 8, seed=0)
    cfg = cfg_for(0.5, audio=[], image=["image"], text=[])
    cfg.schema.label = "caption"
    with pytest.raises(ConfigError, match="generate.ctc aligns the target with one audio column; this run has 0"):
        train_generation(cfg, scenes, out=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="generate.ctc must be >= 0"):
        Config.from_dict({"generate": {"ctc": -0.1}})
    two = write_clips(tmp_path, 8, seed=3).assign(other=lambda d: d["audio"])
    with pytest.raises(ConfigError, match="this run has 2 \\(audio, other\\)"):
        train_generation(cfg_for(0.5, audio=["audio", "other"]), pd.DataFrame(two), out=tmp_path / "two",
                         progress=False)


def ctc_nll(model, inputs: dict, texts: list[str], targets) -> list[float]:
    """Each row's -log p(text | clip) under the CTC head, computed here from its logits."""
    from torch.nn import functional as F
    logits, mask = model.ctc_logits(*model.read(inputs))                   # (B, T, V + 1), (B, T)
    logp = F.log_softmax(logits.float(), -1)
    out = []
    for i, t in enumerate(texts):
        ids = targets.encode(t)[:-1]                                        # without end-of-text
        n = int(mask[i].sum())
        out.append(float(F.ctc_loss(logp[i, :n, None], ids[None], [n], [len(ids)], blank=logp.shape[-1] - 1,
                                    reduction="sum")))
    return out


def test_ctc_rescoring_picks_among_the_beams_and_a_row_does_not_depend_on_its_batch(tmp_path):
    """generate.ctc_rescore: at weight 1 the CTC head alone chooses among the beams, so the text
    written is never less likely under it than the beam search's own choice; rows decode alike
    alone and together (the beams of one clip stay with it)."""
    from polyfuse.recipes.generate import train_generation
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = cfg_for(1.0)
    cfg.train.epochs = 6                                  # half-trained: beams that disagree
    gen, _ = train_generation(cfg, write_clips(tmp_path, 96, seed=0), out=tmp_path / "run", progress=False)
    test = write_clips(tmp_path, 16, seed=5)
    data = gen.encode(gen.read(test))
    beam = gen.generate(data, num_beams=4)
    chosen = gen.generate(data, num_beams=4, ctc_rescore=1.0)
    gen.model.eval()
    with torch.no_grad():
        inputs = gen.collate(list(range(len(test))), data)["inputs"]
        before, after = ctc_nll(gen.model, inputs, beam, gen.targets), ctc_nll(gen.model, inputs, chosen, gen.targets)
    assert all(a <= b + 1e-4 for a, b in zip(after, before)), list(zip(after, before))
    assert sum(after) < sum(before) and chosen != beam            # it chose otherwise somewhere, and better
    assert gen.generate(data, batch_size=1, num_beams=4, ctc_rescore=0.3) == \
        gen.generate(data, batch_size=16, num_beams=4, ctc_rescore=0.3)
    with pytest.raises(ConfigError, match="ctc_rescore must be in"):
        from polyfuse.config import Config
        Config.from_dict({"generate": {"ctc_rescore": 1.5}})
