"""Whisper's encoder as an audio tower at each clip's own length (encoders/whisper.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from polyfuse.encoders.whisper import whisper_features
from polyfuse.inference import Predictor
from polyfuse.recipes.train import train_run

from .test_towers import tower_config


def write_whisper(folder):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=24, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                        eos_token_id=0, decoder_start_token_id=1)
    WhisperModel(cfg).save_pretrained(str(folder))
    WhisperFeatureExtractor(feature_size=16).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from transformers import WhisperModel
    torch.manual_seed(0)
    folder = write_whisper(tmp_path_factory.mktemp("whisper") / "tiny")
    return folder, WhisperModel.from_pretrained(str(folder)).get_encoder().eval()


def test_full_length_input_gives_the_transformers_encoder_output(whisper):
    """At 30 s the clip-length path is transformers' own encoder: the same modules, the same maths."""
    _, enc = whisper
    feats = torch.randn(2, 16, 3000)
    with torch.no_grad():
        want = enc(feats).last_hidden_state
        got, n = whisper_features(enc, feats, torch.tensor([3000, 3000]))
    assert n.tolist() == [1500, 1500]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_clip_gives_the_same_output_alone_or_padded_in_a_batch(whisper):
    _, enc = whisper
    short, long = torch.randn(1, 16, 101), torch.randn(1, 16, 240)
    batch = torch.zeros(2, 16, 240)
    batch[0, :, :101], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone, n_alone = whisper_features(enc, short, torch.tensor([101]))
        both, n = whisper_features(enc, batch, torch.tensor([101, 240]))
    assert n.tolist() == [51, 120] and n_alone.tolist() == [51]
    torch.testing.assert_close(both[0, :51], alone[0], atol=1e-5, rtol=1e-4)
    # Not 30 s of positions: a 2.4 s clip is 120 of them.
    assert both.shape[1] == 120


def test_a_whisper_tower_trains_on_clip_length_and_reloads_without_its_folder(whisper, small_synth, tmp_path):
    folder, _ = whisper
    local = shutil.copytree(folder, tmp_path / "ckpt")
    cfg = tower_config({"audio": local}, tmp_path / "cache", ("audio",), freeze_encoders=True)
    pred, _ = train_run(cfg, small_synth["train"], small_synth["val"], tmp_path / "run", progress=False)
    test = pred.encode(pred.read(small_synth["test"]), on_bad_row="skip")     # rows without audio: skipped
    frames = [row["audio"]["values"].shape[-1] for row in test.inputs if row.get("audio") is not None]
    assert max(frames) <= 50, "0.5 s clips are 50 mel frames, not padded to 3000"
    shutil.rmtree(local)
    again = Predictor.load(tmp_path / "run")
    np.testing.assert_allclose(again.predict(again.encode(again.read(small_synth["test"]), on_bad_row="skip")).outputs,
                               pred.predict(test).outputs, atol=1e-5)
