import io

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from polyfuse.config import AudioConfig, ImageConfig, TextConfig
from polyfuse.data.audio import AudioProcessor, mel_filterbank, resample
from polyfuse.data.image import ImageProcessor
from polyfuse.data.text import TextProcessor


def test_text_tokenizer_is_trained_saved_and_reloaded(tmp_path):
    texts = ["a quiet morning by the river", "a loud street market", "the bright red window today"] * 5
    proc = TextProcessor(TextConfig(vocab_size=120, max_length=5)).fit(texts)
    ids = proc("a quiet morning by the river")["ids"]
    assert ids.dtype == torch.long and len(ids) == 5            # truncated to max_length
    proc.save(tmp_path)
    again = TextProcessor.load(TextConfig(vocab_size=120, max_length=5), tmp_path)
    assert torch.equal(again("a loud street")["ids"], proc("a loud street")["ids"])
    assert proc.pad_id == 0


def test_text_collate_pads_and_masks_absent_rows():
    proc = TextProcessor(TextConfig(vocab_size=100)).fit(["one two three", "four five"] * 3)
    batch = proc.collate([proc("one two three"), None, proc("four")])
    assert batch["ids"].shape == (3, 3)
    assert batch["mask"].tolist() == [[True, True, True], [False] * 3, [True, False, False]]


def test_image_any_mode_becomes_normalised_rgb(tmp_path):
    cfg = ImageConfig(size=16, patch=8)
    proc = ImageProcessor(cfg)
    for mode, color in [("L", 255), ("RGBA", (255, 255, 255, 255)), ("P", 0), ("RGB", (255, 255, 255))]:
        path = tmp_path / f"x_{mode}.png"
        Image.new(mode, (40, 20), color).save(path)
        x = proc(path)["pixels"]
        assert x.shape == (3, 16, 16)
    white = proc(tmp_path / "x_RGB.png")["pixels"]
    assert torch.allclose(white, torch.ones_like(white))        # (1 - 0.5) / 0.5


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    x = ImageProcessor(ImageConfig(size=8, patch=8))(path)["pixels"]
    assert torch.allclose(x, torch.ones_like(x))


def test_mel_filterbank_and_resampling():
    fb = mel_filterbank(16000, 400, 32)
    assert fb.shape == (201, 32) and torch.all(fb >= 0) and torch.all(fb.sum(0) > 0)
    t = np.arange(8000) / 8000
    wave = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    up = resample(wave, 8000, 16000)
    assert len(up) == 16000
    peak = np.argmax(np.abs(np.fft.rfft(up))) * 16000 / len(up)
    assert abs(peak - 440) < 2


def test_audio_mono_resampled_cropped_and_padded_to_whole_tokens(tmp_path):
    cfg = AudioConfig(sample_rate=16000, n_mels=16, max_seconds=0.5, frames_per_token=4)
    stereo = np.random.default_rng(0).normal(0, 0.1, size=(8000 * 2, 2)).astype(np.float32)   # 2 s at 8 kHz
    sf.write(tmp_path / "s.wav", stereo, 8000)
    mel = AudioProcessor(cfg)(tmp_path / "s.wav")["mel"]
    frames = int(0.5 * 16000) // 160 + 1                       # cropped to max_seconds
    assert mel.shape == (16, frames + (-frames) % 4)
    assert mel.shape[1] % 4 == 0


def test_audio_normalisation_is_fitted_and_saved(tmp_path):
    cfg = AudioConfig(n_mels=16)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], rng.normal(0, 0.3, 4000).astype(np.float32), 16000)
    proc = AudioProcessor(cfg).fit(paths)
    proc.save(tmp_path)
    again = AudioProcessor.load(cfg, tmp_path)
    assert (again.mean, again.std) == (proc.mean, proc.std) and proc.std > 0
    mel = torch.cat([proc(p)["mel"] for p in paths], 1)
    assert abs(float(mel.mean())) < 0.5


def test_clip_level_removes_recording_gain(tmp_path):
    """audio.level "clip": the same sound 20 dB louder gives the same features; "none" keeps the level."""
    rng = np.random.default_rng(2)
    wave = rng.normal(0, 0.01, 8000).astype(np.float32)           # x10 stays below full scale
    sf.write(tmp_path / "quiet.wav", wave, 16000)
    sf.write(tmp_path / "loud.wav", wave * 10, 16000)
    for level, same in (("clip", True), ("none", False)):
        proc = AudioProcessor(AudioConfig(n_mels=16, level=level)).fit([tmp_path / "quiet.wav"])
        quiet, loud = proc(tmp_path / "quiet.wav")["mel"], proc(tmp_path / "loud.wav")["mel"]
        assert torch.allclose(quiet, loud, atol=0.05) is same, level     # 16-bit rounding of the quiet file
        assert abs(float(quiet.mean())) < 1e-4               # the fitted statistics are those of the features


def test_band_level_removes_a_microphone_response(tmp_path):
    """audio.level "band": the same sound through a fixed filter (a microphone with less treble, more
    bass) gives nearly the same features; "clip" removes only the overall level and keeps the tilt."""
    rng = np.random.default_rng(3)
    wave = (rng.normal(0, 0.02, 16000) * np.repeat(rng.uniform(0.2, 1.0, 16), 1000)).astype(np.float32)
    spectrum = np.fft.rfft(wave)
    tilt = np.linspace(2.0, 0.25, len(spectrum))               # 6 dB up at the bottom, 12 dB down at the top
    sf.write(tmp_path / "a.wav", wave, 16000)
    sf.write(tmp_path / "b.wav", np.fft.irfft(spectrum * tilt, len(wave)).astype(np.float32), 16000)
    gaps = {}
    for level in ("band", "clip"):
        proc = AudioProcessor(AudioConfig(n_mels=16, level=level))
        a, b = proc.features(proc.decode(tmp_path / "a.wav")), proc.features(proc.decode(tmp_path / "b.wav"))
        gaps[level] = float((a - b).abs().mean())
    assert gaps["band"] < 0.1 < gaps["clip"], gaps


def test_audio_accepts_file_objects():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    buf.seek(0)
    assert AudioProcessor(AudioConfig(n_mels=8))(buf)["mel"].shape[0] == 8


def test_tokenizer_training_is_reproducible_across_processes(tmp_path):
    """Two fresh interpreters (different hash seeds) train the same tokenizer from the same texts."""
    import subprocess
    import sys
    code = ("from polyfuse.data.text import TextProcessor; from polyfuse.config import TextConfig;"
            "import sys; texts=['a quiet morning by the river', 'loud bright street', 'the old harbour today',"
            " 'sharp shrill market near the station', 'mellow garden in the window'] * 4;"
            "sys.stdout.write(TextProcessor(TextConfig(vocab_size=90)).fit(texts).tokenizer.to_str())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2, 3)}
    assert len(outs) == 1
