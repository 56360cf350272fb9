"""An encoder-decoder decoder (Whisper) reading the fused tokens and its own encoder's states through
cross-attention. A tiny random Whisper is both the audio tower and the decoder (as whisper-tiny.en
is in docs/generation.md); clips are 1-3 tones, transcribed as one word per tone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from .conftest import WORDS

TONES = {"one": 500.0, "two": 1500.0, "three": 4000.0}
SR = 16000


def write_word_tokenizer(folder) -> dict:
    """A word-level tokenizer over WORDS (ids: pad 0, eos 1, unk 2, start 3); returns its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", "<start>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return vocab


def write_whisper_decoder(folder):
    """A WhisperForConditionalGeneration with a word-level tokenizer, and its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    vocab = write_word_tokenizer(folder)
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=16, d_model=24, encoder_layers=1, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=3,
                        eos_token_id=1, decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[],
                        init_std=0.3)   # a random tower whose states say more about the sound than its positions
    WhisperForConditionalGeneration(cfg).save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=16).save_pretrained(str(folder))
    return folder


def write_clips(folder, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(list(TONES), size=int(rng.integers(1, 4))))
        t = np.arange(int(0.15 * SR)) / SR
        parts = []
        for w in words:
            parts += [0.5 * np.sin(2 * np.pi * TONES[w] * t), np.zeros(int(0.05 * SR))]
        path = folder / f"c{seed}_{i}.wav"
        sf.write(path, np.concatenate(parts).astype(np.float32), SR)
        rows.append({"audio": str(path), "text": " ".join(words)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def whisper_decoder(tmp_path_factory):
    return write_whisper_decoder(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


def cfg_for(decoder, cache, **generate):
    from polyfuse.config import Config
    return Config.from_dict({
        "schema": {"audio": ["audio"], "label": "text", "task": "generation"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "freeze_encoders": True,
                  "feature_cache_dir": str(cache)},
        "audio": {"encoder": str(decoder), "max_seconds": 1.0},
        "train": {"epochs": 30, "batch_size": 8, "lr": 3e-3, "patience": None, "val_fraction": 0.0},
        "generate": {"decoder": str(decoder), "decoder_train": "full", "first_stage": 0.0,
                     "max_new_tokens": 6, **generate}})


@pytest.fixture(scope="module")
def trained(whisper_decoder, tmp_path_factory):
    from polyfuse.recipes.generate import train_generation
    tmp = tmp_path_factory.mktemp("seq2seq")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen, _ = train_generation(cfg_for(whisper_decoder, tmp / "cache"), write_clips(tmp, 96, seed=0),
                              out=tmp / "run", progress=False)
    return gen, tmp


def test_a_whisper_decoder_learns_to_transcribe_and_reloads_to_the_same_text(trained):
    from polyfuse.generation.run import Generator
    gen, tmp = trained
    test = write_clips(tmp, 24, seed=1)
    texts = gen.generate(gen.encode(gen.read(test)))
    assert np.mean([t == c for t, c in zip(texts, test["text"])]) >= 0.8, list(zip(texts, test["text"]))[:6]
    again = Generator.load(tmp / "run")
    assert again.generate(again.encode(again.read(test))) == texts
    assert again.generate(again.encode(again.read(test)), num_beams=2) == texts


def test_memory_padding_changes_nothing(trained):
    """Whisper's decoder takes no memory mask: without the hook a short clip batched with a long one
    would attend to the long one's padding."""
    gen, tmp = trained
    test = write_clips(tmp, 6, seed=2)
    data = gen.encode(gen.read(test))
    alone = [gen.generate_items([row]) for row in data.inputs]
    batched = gen.generate_items(data.inputs)
    assert [a[0] for a in alone] == batched
    batch = gen.collate(list(range(len(test))), data)
    batch["target"] = gen.targets.collate([gen.targets.encode(t) for t in test["text"]])
    gen.model.eval()
    with torch.no_grad():
        together = gen.model(batch)["loss"]
        one = gen.model({"inputs": gen.collate([0], data)["inputs"],
                         "target": gen.targets.collate([gen.targets.encode(test["text"][0])])})["loss"]
        first = {"inputs": batch["inputs"], "target": {k: v[:1] for k, v in batch["target"].items()}}
        first["inputs"] = {c: {k: (v[:1] if torch.is_tensor(v) else v) for k, v in p.items()}
                           for c, p in batch["inputs"].items()}
        torch.testing.assert_close(gen.model(first)["loss"], one)
    assert torch.isfinite(together)


def test_the_towers_own_states_join_the_memory_untouched(whisper_decoder, tmp_path):
    """Before training, the decoder reads exactly what its own encoder would give it (the clip's
    positions of the clip followed by silence up to audio.tower_min_seconds), after the projected
    fused tokens, which start at zero."""
    from polyfuse.data.manifest import read_table
    from polyfuse.data.processors import Processors
    from polyfuse.encoders.whisper import conv_out, whisper_features
    from polyfuse.generation.run import Generator, build_generation_model
    from polyfuse.generation.targets import TextTargets
    cfg = cfg_for(whisper_decoder, tmp_path / "cache")
    table = read_table(write_clips(tmp_path, 4, seed=3))
    processors = Processors.build(cfg, cfg.schema).fit(table)
    targets = TextTargets.from_decoder(str(whisper_decoder), 8)
    assert targets.start_ids == [3]
    model = build_generation_model(cfg, processors, targets, pretrained_weights=True).eval()
    gen = Generator(cfg, processors, targets, model)
    data = gen.encode(table)
    part = gen.collate(list(range(len(data))), data)["inputs"]["audio"]
    with torch.no_grad():
        memory, mask = model.memory({"audio": part})
        h, n = whisper_features(model.body.encoders["audio"].tower, part["values"], part["lengths"])
    keep = torch.minimum(conv_out(part["frames"]), n)
    T = int(keep.max())
    torch.testing.assert_close(memory[:, -T:][mask[:, -T:]], h[:, :T][torch.arange(T)[None] < keep[:, None]])
    assert float(memory[:, :-T].abs().max()) == 0.0
    assert not any(name.startswith("lm.model.encoder.") for name in model.state_dict())


def test_a_text_encoder_decoder_reads_the_fused_tokens_through_its_memory_mask(tmp_path):
    """BART (no tower of its own family here): the memory is the projected fused tokens alone, its
    padding masked by transformers' own attention_mask; images of a coloured square are captioned."""
    from transformers import BartConfig, BartForConditionalGeneration

    from polyfuse.generation.run import Generator
    from polyfuse.recipes.generate import train_generation

    from .test_generation import cfg_for as image_cfg
    from .test_generation import write_scenes
    folder = tmp_path / "tiny-bart"
    vocab = write_word_tokenizer(folder)
    torch.manual_seed(0)
    BartForConditionalGeneration(BartConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
        pad_token_id=0, bos_token_id=3, eos_token_id=1, decoder_start_token_id=3, forced_eos_token_id=None,
        forced_bos_token_id=None, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)).save_pretrained(str(folder))
    torch.set_num_threads(1)
    # A random decoder: nothing to keep, no reason to train the projector alone first.
    cfg = image_cfg(folder, decoder_train="full", decoder_lr_scale=1.0, first_stage=0.0)
    gen, _ = train_generation(cfg, write_scenes(tmp_path, 96, seed=0), out=tmp_path / "run", progress=False)
    assert gen.model.seq2seq and not gen.model.own
    test = write_scenes(tmp_path, 24, seed=1)
    data = gen.encode(gen.read(test))
    texts = gen.generate(data)
    assert np.mean([t == c for t, c in zip(texts, test["caption"])]) >= 0.8, list(zip(texts, test["caption"]))[:6]
    assert [gen.generate_items([row])[0] for row in data.inputs[:6]] == texts[:6]
    assert Generator.load(tmp_path / "run").generate(data) == texts


def test_a_pretrained_decoder_trained_whole_learns_at_its_share_of_the_rate(trained):
    gen, _ = trained
    from polyfuse.training.trainer import param_groups
    scales = gen.model.lr_scales()
    assert scales == {gen.model.lm: gen.cfg.generate.decoder_lr_scale}
    rate = {id(p): g["lr"] for g in param_groups(gen.model, 0.0, 1e-3, scales) for p in g["params"]}
    assert rate[id(gen.model.lm.get_input_embeddings().weight)] == 1e-3 * gen.cfg.generate.decoder_lr_scale
    assert rate[id(gen.model.projector[0].weight)] == 1e-3


def test_the_plan_fine_tunes_an_encoder_decoder_that_reads_its_own_encoder(whisper_decoder, tmp_path):
    """Whisper's encoder as the tower and its decoder: the plan trains the decoder too (it must learn
    the targets' format) at one fine-tuning rate; the same decoder over a scratch encoder keeps the
    rules of a fresh projector (decoder frozen unless asked, the rate of new weights)."""
    from polyfuse.data.manifest import read_table
    from polyfuse.planning import make_plan, profile_table
    table = read_table(write_clips(tmp_path, 24, seed=0))
    cfg = cfg_for(whisper_decoder, tmp_path / "cache")
    own = make_plan(profile_table(table, cfg.schema), cfg, len(table)).settings
    assert own["generate"]["decoder_train"] == "full" and own["generate"]["decoder_lr_scale"] == 1.0
    assert own["train"]["lr"] == pytest.approx(1e-4)
    cfg.audio.encoder = "scratch"
    other = make_plan(profile_table(table, cfg.schema), cfg, len(table)).settings
    assert "decoder_train" not in other["generate"] and other["train"]["lr"] == pytest.approx(1e-3)
