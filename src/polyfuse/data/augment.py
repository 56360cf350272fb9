"""Training-time augmentations on collated batches, per modality (config section `augment`).

They act on the tensors the processors made (read back from the decode cache), so a fresh
variant of every row costs no decoding. Randomness comes from the global torch RNG, which
the recipe seeds with train.seed and every checkpoint saves: augmented runs are reproducible and
resume exactly. Only the training collate applies them; validation, evaluation and serving never do.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..config import AugmentConfig
from .audio import AudioProcessor


class Augmenter:
    def __init__(self, cfg: AugmentConfig, processors):
        self.cfg = cfg
        image, audio, text = (processors.by_modality.get(m) for m in ("image", "audio", "text"))
        self.img_mean = image.mean if image is not None else None          # (3, 1, 1)
        self.img_std = image.std if image is not None else None
        self.audio_std = audio.std if isinstance(audio, AudioProcessor) else 1.0   # a tower's values: unit scale
        self.mask_id = text.mask_id if text is not None else None
        self.pad_id = text.pad_id if text is not None else 0
        # A pretrained text tower's ids are left alone: dropping tokens could delete its [CLS]/[SEP].
        # Nor are a cached frozen tower's inputs: every edited input would miss the feature cache,
        # re-running the tower and growing the cache on disk each epoch. Other modalities still are.
        from .network import NetworkImageProcessor
        from .pretrained import TowerTextProcessor, _TowerProcessor
        mc = processors.cfg.model
        cached = mc.towers_fully_frozen and mc.feature_cache
        self.skip = {m for m, p in processors.by_modality.items()
                     if isinstance(p, TowerTextProcessor)
                     or (cached and isinstance(p, (_TowerProcessor, NetworkImageProcessor)))}

    def __call__(self, inputs: dict) -> dict:
        out = {}
        for col, part in inputs.items():
            fn = None if part["modality"] in self.skip else {"image": self.image, "audio": self.audio,
                                                              "text": self.text}.get(part["modality"])
            # Parts of another shape (say a pretrained tower's own inputs) pass through unchanged.
            keys = {"image": "pixels", "audio": "mel", "text": "ids"}.get(part["modality"])
            out[col] = fn(part) if fn is not None and keys in part else part
        return out

    # -- images: (B, 3, S, S), normalised ----------------------------------------------------
    def image(self, part: dict) -> dict:
        c = self.cfg
        x = part["pixels"] * self.img_std + self.img_mean                  # back to [0, 1]
        B, _, S, _ = x.shape
        out = x.clone()
        if c.image_crop_scale < 1.0:
            for i in range(B):
                out[i] = random_resized_crop(x[i], c.image_crop_scale)
        if c.image_flip:
            flip = torch.rand(B) < 0.5
            out[flip] = out[flip].flip(-1)
        if c.color_jitter > 0:
            out = color_jitter(out, c.color_jitter)
        pixels = (out.clamp(0, 1) - self.img_mean) / self.img_std
        return {**part, "pixels": torch.where(part["present"][:, None, None, None], pixels, part["pixels"])}

    # -- audio: normalised log-mel (B, n_mels, F), mask (B, F) ------------------------------------
    def audio(self, part: dict) -> dict:
        c = self.cfg
        mel, mask = part["mel"].clone(), part["mask"]
        B, n_mels, _ = mel.shape
        if c.freq_warp > 0:
            mel = freq_warp(mel, c.freq_warp)
        if c.audio_filter_db > 0:
            mel = mel + random_filter(B, n_mels, c.audio_filter_db) / self.audio_std
        lengths = mask.sum(1).tolist()
        if c.audio_crop > 0 or c.audio_speed > 0:
            mask = mask.clone()
        for i, n in enumerate(lengths):
            if n == 0:
                continue
            if c.audio_speed > 0:
                n = change_tempo(mel, mask, i, n, 1.0 + (float(torch.rand(())) * 2 - 1) * c.audio_speed)
            if c.audio_crop > 0:         # a random stretch of at least 1 - audio_crop of the clip
                keep = int(torch.randint(max(1, math.ceil((1 - c.audio_crop) * n)), n + 1, ()))
                t0 = int(torch.randint(0, n - keep + 1, ()))
                mel[i, :, :keep] = mel[i, :, t0:t0 + keep].clone()
                mask[i, keep:n] = False
                n = keep
            if c.audio_shift > 0:
                s = int(torch.randint(-int(c.audio_shift * n), int(c.audio_shift * n) + 1, ()))
                mel[i, :, :n] = mel[i, :, :n].roll(s, dims=-1)
            for _ in range(c.time_masks):
                w = int(torch.randint(0, min(c.time_mask_width, n) + 1, ()))
                t0 = int(torch.randint(0, n - w + 1, ()))
                mel[i, :, t0:t0 + w] = 0.0                                  # 0 = the mean log-mel
            for _ in range(c.freq_masks):
                w = int(torch.randint(0, min(c.freq_mask_width, n_mels) + 1, ()))
                f0 = int(torch.randint(0, n_mels - w + 1, ()))
                mel[i, f0:f0 + w, :n] = 0.0
        # Gain multiplies power, so it adds a constant to the log-mel (in normalised units).
        gain_db = (torch.rand(B, 1, 1) * 2 - 1) * c.audio_gain_db
        mel = mel + gain_db * math.log(10) / 10 / self.audio_std
        mel = mel + c.audio_noise * torch.randn_like(mel)
        return {**part, "mel": mel * mask[:, None, :], "mask": mask}       # padding stays exactly zero

    # -- text: ids (B, T), mask (B, T) ---------------------------------------------------------
    def text(self, part: dict) -> dict:
        c = self.cfg
        ids, mask = part["ids"], part["mask"]
        rows = []
        for i in range(ids.shape[0]):
            row = ids[i, mask[i]]
            if len(row) == 0:
                rows.append(row)
                continue
            if c.token_dropout > 0 and len(row) > 1:
                keep = torch.rand(len(row)) >= c.token_dropout
                if keep.any():
                    row = row[keep]
            if c.span_mask > 0 and self.mask_id is not None and len(row) > 1:
                w = max(1, round(c.span_mask * len(row)))
                t0 = int(torch.randint(0, len(row) - w + 1, ()))
                row = row.clone()
                row[t0:t0 + w] = self.mask_id
            rows.append(row)
        T = max(1, max(len(r) for r in rows))
        new_ids = torch.full((len(rows), T), self.pad_id, dtype=ids.dtype)
        new_mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            new_ids[i, :len(r)], new_mask[i, :len(r)] = r, True
        return {**part, "ids": new_ids, "mask": new_mask}


def freq_warp(mel: torch.Tensor, w: float) -> torch.Tensor:
    """(B, n_mels, F): each row's mel axis stretched by a factor in [1 - w, 1 + w] (a pitch or
    vocal-tract-length change, as in VTLP: Jaitly & Hinton 2013), by linear interpolation; bins
    pulled from beyond the top take the top bin."""
    B, n_mels, _ = mel.shape
    a = 1.0 + (torch.rand(B, 1) * 2 - 1) * w                                  # (B, 1)
    src = (torch.arange(n_mels, dtype=mel.dtype)[None] / a).clamp(max=n_mels - 1)   # (B, n_mels)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_mels - 1)
    frac = (src - lo.to(mel.dtype))[..., None]                                # (B, n_mels, 1)
    take = lambda idx: mel.gather(1, idx[..., None].expand(-1, -1, mel.shape[2]))
    return take(lo) * (1 - frac) + take(hi) * frac


def change_tempo(mel: torch.Tensor, mask: torch.Tensor, i: int, n: int, rate: float) -> int:
    """Row i's first n frames of (B, n_mels, F) played at `rate` (in place): resampled by linear
    interpolation to n / rate frames, no more than the batch's F, so nothing is cut off. Speakers
    differ in tempo as much as in pitch; speech recognisers perturb speed for the same reason (Ko
    et al., Interspeech 2015), here on the log-mel frames, which leaves the pitch alone (freq_warp
    moves it). Returns the new length; the mask follows it."""
    m = max(1, min(mel.shape[2], round(n / rate)))
    if m != n:
        mel[i, :, :m] = F.interpolate(mel[i:i + 1, :, :n], size=m, mode="linear", align_corners=True)[0]
        mel[i, :, m:] = 0.0
        mask[i, :m], mask[i, m:] = True, False
    return m


def random_filter(B: int, n_mels: int, db: float, points: int = 4) -> torch.Tensor:
    """(B, n_mels, 1) log-power offsets of a random smooth equaliser: `points` gains in [-db, +db]
    spread over the mel axis and interpolated linearly between them. A different microphone or
    room colours the spectrum this way (FilterAugment: Nam et al., ICASSP 2022)."""
    gains = (torch.rand(B, 1, points) * 2 - 1) * db * math.log(10) / 10         # dB -> natural log power
    return F.interpolate(gains, size=n_mels, mode="linear", align_corners=True).transpose(1, 2)


def random_resized_crop(x: torch.Tensor, min_scale: float) -> torch.Tensor:
    """(3, S, S) in [0, 1]: a crop of area in [min_scale, 1] of the image, aspect ratio in [3/4, 4/3],
    resized back to S x S."""
    _, S, _ = x.shape
    area = S * S * float(torch.empty(()).uniform_(min_scale, 1.0))
    ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
    w = min(S, max(1, round(math.sqrt(area * ratio))))
    h = min(S, max(1, round(math.sqrt(area / ratio))))
    top = int(torch.randint(0, S - h + 1, ()))
    left = int(torch.randint(0, S - w + 1, ()))
    crop = x[None, :, top:top + h, left:left + w]
    return F.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False)[0]


def color_jitter(x: torch.Tensor, j: float) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1]: random brightness, contrast and saturation factors in [1 - j, 1 + j]."""
    B = x.shape[0]

    def factor():
        return 1.0 + (torch.rand(B, 1, 1, 1) * 2 - 1) * j

    x = x * factor()
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]    # (B, 1, S, S)
    mean = grey.mean((2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    return grey + (x - grey) * factor()


def augmenting(augmenter: Augmenter):
    """The trainer's augment step: a collated batch -> the same batch with augmented inputs. It runs
    in the training process, after DataLoader workers made the batch: the global RNG it draws from is
    the one checkpoints save, so 0 or N workers and a resumed run augment alike."""
    def augment(batch: dict) -> dict:
        return {**batch, "inputs": augmenter(batch["inputs"])}
    return augment
