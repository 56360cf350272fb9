"""Whisper's encoder as an audio tower at each clip's own length (encoders/whisper.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from polyfuse.config import Config
from polyfuse.data.pretrained import TowerAudioProcessor, TowerSource
from polyfuse.encoders.pretrained import TowerEncoder
from polyfuse.encoders.whisper import conv_out, whisper_features
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
    assert set(frames) == {500}, "0.5 s clips and silence up to audio.tower_min_seconds (5 s): 500 mel frames, not 3000"
    shutil.rmtree(local)
    again = Predictor.load(tmp_path / "run")
    np.testing.assert_allclose(again.predict(again.encode(again.read(small_synth["test"]), on_bad_row="skip")).outputs,
                               pred.predict(test).outputs, atol=1e-5)


def _tower(folder, min_seconds):
    cfg = Config.from_dict({"audio": {"encoder": str(folder), "tower_min_seconds": min_seconds, "max_seconds": 30.0},
                            "model": {"d_model": 8, "n_heads": 2, "freeze_encoders": True, "feature_cache": False}})
    source = TowerSource(str(folder), with_weights=True)
    return TowerAudioProcessor.create(cfg, source), TowerEncoder(cfg, "audio", source).eval()


def _clip(tmp_path, name, seconds, seed):
    wave = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
    sf.write(tmp_path / name, wave, 16000)
    return tmp_path / name, wave


def test_a_clip_followed_by_silence_to_30_s_reads_as_whisper_reads_it(whisper, tmp_path):
    """With audio.tower_min_seconds 30 the tower sees what Whisper's own pipeline makes of the clip
    (padded with silence to 30 s), and keeps the clip's positions of transformers' encoder output."""
    folder, enc = whisper
    path, wave = _clip(tmp_path, "a.wav", 0.7, 0)
    proc, tower = _tower(folder, 30.0)
    part = proc.collate([proc(path)])
    with torch.no_grad():
        got, mask = tower.features(part)
        want = enc(proc.hf(wave, sampling_rate=16000, return_tensors="pt").input_features).last_hidden_state
    n = int(conv_out(torch.tensor(70)))                    # 0.7 s: 70 frames, 35 positions of 1,500
    assert part["values"].shape[-1] == 3000 and got.shape[1] == n == int(mask.sum())
    torch.testing.assert_close(got[0], want[0, :n], atol=1e-5, rtol=1e-4)


def test_clips_with_their_silence_give_the_same_tokens_alone_or_in_a_batch(whisper, tmp_path):
    folder, _ = whisper
    proc, tower = _tower(folder, 1.0)
    short, long = proc(_clip(tmp_path, "s.wav", 0.3, 1)[0]), proc(_clip(tmp_path, "l.wav", 1.6, 2)[0])
    assert short["values"].shape[-1] == 100 and long["values"].shape[-1] == 160, "silence up to 1 s, none past it"
    with torch.no_grad():
        both, mask = tower.features(proc.collate([short, long]))
        alone, _ = tower.features(proc.collate([short]))
    assert mask.sum(1).tolist() == [15, 80], "the clips' own positions only"
    torch.testing.assert_close(both[0, :15], alone[0], atol=1e-5, rtol=1e-4)
