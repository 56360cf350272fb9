"""Audio processor: soundfile decode, mono, resample, log-mel, crop; normalised with training statistics."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..config import AudioConfig
from ..errors import InputError
from .sources import source_name


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (fft_freqs[None] - lower) / (center - lower)
    down = (upper - fft_freqs[None]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(up, down))             # (n_mels, n_freqs)
    return torch.from_numpy(fb.T.astype(np.float32))


def resample(wave: np.ndarray, orig: int, target: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain (exact for periodic signals, good for clips)."""
    if orig == target:
        return wave
    n_out = max(1, int(round(len(wave) * target / orig)))
    spec = np.fft.rfft(wave)
    n_keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=complex)
    out_spec[:n_keep] = spec[:n_keep]
    return (np.fft.irfft(out_spec, n=n_out) * (n_out / len(wave))).astype(np.float32)


class AudioProcessor:
    kind = "audio"
    fields = ("mel", "mask")            # what collate returns that the encoder reads (the serving graph's inputs)

    def __init__(self, cfg: AudioConfig, mean: float = 0.0, std: float = 1.0):
        self.cfg = cfg
        self.mean, self.std = mean, std
        self.fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        self.window = torch.hann_window(cfg.n_fft)

    # -- fitting and persistence -------------------------------------------------
    def fit(self, paths, limit: int = 256) -> "AudioProcessor":
        """Mean and std of the log-mel over (up to `limit`) training files; bad files are left for later."""
        values = []
        for p in paths:
            try:
                values.append(self.features(self.decode(p)).flatten())
            except InputError:
                continue
            if len(values) >= limit:
                break
        if values:
            allv = torch.cat(values)
            self.mean, self.std = float(allv.mean()), float(allv.std().clamp_min(1e-3))
        return self

    def save(self, folder: Path):
        (folder / "audio.json").write_text(json.dumps({"mean": self.mean, "std": self.std}))

    @classmethod
    def load(cls, cfg: AudioConfig, folder: Path) -> "AudioProcessor":
        st = json.loads((folder / "audio.json").read_text())
        return cls(cfg, st["mean"], st["std"])

    # -- one value ---------------------------------------------------------------
    def decode(self, source) -> np.ndarray:
        """Mono float32 at cfg.sample_rate, cropped to cfg.max_seconds. Refuses over-long files unread."""
        name = source_name(source)              # a path, or the shard and member of a file held as bytes
        if isinstance(source, (str, Path)) and not Path(source).exists():
            raise InputError("audio file not found", file=name)
        try:
            with sf.SoundFile(source) as f:         # one open for the length check and the read
                frames, rate = f.frames, f.samplerate
                if frames <= 0 or rate <= 0:
                    raise InputError("audio file has no samples", file=name)
                seconds = frames / rate
                if seconds > self.cfg.max_file_seconds:
                    raise InputError(f"audio is {seconds:.1f} s long, over the limit of "
                                     f"{self.cfg.max_file_seconds:g} s (audio.max_file_seconds)", file=name)
                keep = int(math.ceil(self.cfg.max_seconds * rate))
                wave, sr = f.read(frames=keep, dtype="float32", always_2d=True), rate
        except InputError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise InputError(f"corrupt or unsupported audio: {e}", file=name) from None
        if wave.shape[0] == 0:
            raise InputError("audio file has no samples", file=name)
        if not np.all(np.isfinite(wave)):
            raise InputError("audio contains NaN or infinite samples", file=name)
        return resample(wave.mean(axis=1), sr, self.cfg.sample_rate)

    def log_mel(self, wave: np.ndarray) -> torch.Tensor:
        """(n_mels, frames) natural-log mel power."""
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        spec = torch.stft(x, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = torch.view_as_real(spec).pow(2).sum(-1)           # (n_freqs, frames); |z|^2 without a sqrt
        return torch.log(self.fb.T @ power + 1e-6)

    def features(self, wave: np.ndarray) -> torch.Tensor:
        """(n_mels, frames) log-mel, less the clip's own mean level (audio.level "clip") or each
        band's own mean over the clip ("band": a fixed filter, as a microphone is, adds the same
        amount to a band's log-mel in every frame, so this removes it)."""
        return self.remove_level(self.log_mel(wave))

    def remove_level(self, mel: torch.Tensor) -> torch.Tensor:
        """(n_mels, frames) log-mel less what audio.level removes (see features)."""
        if self.cfg.level == "clip":
            return mel - mel.mean()
        if self.cfg.level == "band":
            return mel - mel.mean(1, keepdim=True)
        return mel

    def fingerprint(self) -> str:
        """Every setting `pack` depends on (the decode cache's key); the training statistics are not:
        they apply in `unpack`, so runs with different statistics share cached clips."""
        return f"{type(self).__name__} {json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)}"

    def pack(self, source) -> dict:
        """The compact decoded form the cache stores: {"mel": (n_mels, frames) fp16 log-mel}, not normalised.
        fp16 keeps about 3 significant digits, far below the spread of any log-mel feature."""
        return {"mel": self.features(self.decode(source)).numpy().astype(np.float16)}

    def unpack(self, packed: dict) -> dict:
        mel = torch.from_numpy(packed["mel"]).float().sub_(self.mean).div_(self.std)    # a copy, then in place
        # Pad each row to whole tokens here, not in the batch, so a row's last token never
        # depends on which other rows share its batch.
        k = self.cfg.frames_per_token
        frames = mel.shape[1]
        mel = torch.nn.functional.pad(mel, (0, (-frames) % k))
        return {"mel": mel}

    def __call__(self, source) -> dict:
        # Always through the packed form, so a cache hit and a fresh decode are the same tensors.
        return self.unpack(self.pack(source))

    def collate(self, items: list[dict | None]) -> dict:
        """mel (B, n_mels, F) padded with zeros; mask (B, F) True on real frames."""
        F = max((x["mel"].shape[1] for x in items if x is not None), default=self.cfg.frames_per_token)
        mel = torch.zeros(len(items), self.cfg.n_mels, F)
        mask = torch.zeros(len(items), F, dtype=torch.bool)
        for i, x in enumerate(items):
            if x is not None:
                n = x["mel"].shape[1]
                mel[i, :, :n], mask[i, :n] = x["mel"], True
        return {"mel": mel, "mask": mask, "present": mask.any(1)}
