"""Masked patch / frame modelling (MAE-style targets, SimMIM-style input): a random part of each image's
patches and each clip's spectrogram tokens is hidden and its normalised values regressed from the
fused sequence. A hidden patch's pixels (a hidden token's frames) are zeroed before the encoder and
its token gets a learned mask embedding added, so nothing of its content reaches the model; its
position embedding stays, so the model knows where to reconstruct. Only hidden positions are scored.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import Needs, Step, random_selection, zero_loss


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, (S/p)^2, C*p*p), patches in the encoder's row-major token order."""
    B, C, S, _ = pixels.shape
    g = S // p
    x = pixels.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5)          # (B, g, g, C, p, p)
    return x.reshape(B, g * g, C * p * p)


def framify(mel: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n_mels, F) -> (B, F/k, n_mels*k): the k frames of each audio token."""
    B, n, F_ = mel.shape
    return mel.reshape(B, n, F_ // k, k).permute(0, 2, 1, 3).reshape(B, F_ // k, n * k)


def normalised(x: torch.Tensor) -> torch.Tensor:
    """Each patch/token standardised on its own (MAE's norm_pix_loss target)."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / (var + 1e-6).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the selected positions only. pred/target (B, T, K), sel (B, T)."""
    err = ((pred.float() - target.float()) ** 2).mean(-1)                  # (B, T)
    return (err * sel).sum() / sel.sum().clamp_min(1)


class MaskedPatch(nn.Module):
    name, masks, joint = "masked_patch", True, True
    needs = Needs(modalities=("image", "audio"), own_encoder=True, fused_tokens=True)

    def __init__(self, cfg, modalities: list[str], ratio: float):
        super().__init__()
        D = cfg.model.d_model
        self.ratio, self.patch, self.k = ratio, cfg.image.patch, cfg.audio.frames_per_token
        dims = {"image": 3 * self.patch ** 2, "audio": cfg.audio.n_mels * self.k}
        self.mods = [m for m in modalities if m in dims]
        self.mask_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(D) * 0.02) for m in self.mods})
        self.decoder = nn.ModuleDict({m: nn.Linear(D, dims[m]) for m in self.mods})

    def corrupt(self, inputs: dict) -> tuple[dict, dict]:
        """({column: part with hidden content zeroed}, {"targets": {column: (B, T, K)}, "hidden": {column: (B, T)}})."""
        parts, targets, hidden = {}, {}, {}
        for c in (c for c, p in inputs.items() if p["modality"] in self.mods):
            parts[c], targets[c], hidden[c] = self.corrupt_part(inputs[c])
        return parts, {"targets": targets, "hidden": hidden}

    def corrupt_part(self, part: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """(part with hidden content zeroed, targets (B, T, K), hidden (B, T))."""
        if part["modality"] == "image":
            x = part["pixels"]
            units = patchify(x, self.patch)
            real = part["present"][:, None].expand(-1, units.shape[1])
            hide = random_selection(real, self.ratio)
            g, p = x.shape[-1] // self.patch, self.patch
            pix_hide = hide.view(-1, g, g).repeat_interleave(p, 1).repeat_interleave(p, 2)   # (B, S, S)
            return {**part, "pixels": x.masked_fill(pix_hide[:, None], 0.0)}, normalised(units), hide
        mel = part["mel"]
        units = framify(mel, self.k)
        real = part["mask"][:, :: self.k]
        hide = random_selection(real, self.ratio)
        frame_hide = hide.repeat_interleave(self.k, 1)                      # (B, F)
        return {**part, "mel": mel.masked_fill(frame_hide[:, None], 0.0)}, normalised(units), hide

    def edit(self, encoded: dict, masked: dict) -> dict:
        """A hidden patch's token gets the learned mask embedding (its content is already zeroed)."""
        out = dict(encoded)
        for col, hide in masked["hidden"].items():
            e = encoded[col]
            h = hide[:, : e["tokens"].shape[1]]
            out[col] = {**e, "tokens": e["tokens"] + h[..., None] * self.mask_emb[e["modality"]]}
        return out

    def forward(self, model, step: Step, state: dict) -> dict:
        fused = step.joint
        targets, hidden = step.masked[self.name]["targets"], step.masked[self.name]["hidden"]
        out, losses = {}, []
        for c, hide in hidden.items():
            a, b = fused.spans[c]
            n = b - a                                                       # the encoder may cap tokens
            pred = self.decoder[step.joint_inputs[c]["modality"]](fused.tokens[:, a:b])
            sel = hide[:, :n]
            if not sel.any():
                continue
            loss = masked_mse(pred, targets[c][:, :n], sel)
            out[f"masked_patch_{c}_loss"] = loss.detach()
            losses.append(loss)
        total = torch.stack(losses).mean() if losses else zero_loss(fused.pooled)
        out.update(loss=total, masked_patch_loss=total)
        return out
