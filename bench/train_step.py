"""Training-step throughput of the default Polyfuse model vs. Hugging Face BertModel, and FLOP utilisation.

    .venv/bin/python bench/train_step.py            # defaults below; --help for the knobs

Both models get one full training step per call: forward, loss, backward, AdamW step.
  - Polyfuse: PolyfuseModel, attention fusion (the default), on a text + image + audio batch built
    by the real processors' collate (text rows of random length, every image, audio clips of random
    length), so the sequence is [CLS] + text + image patches + audio tokens with a key padding mask.
  - Reference: transformers.BertModel (SDPA attention) with the same width, depth, heads, MLP size,
    dropout and padded token count T, fed the same padding mask, + a linear head on the pooler output.
Repetitions are interleaved (GEMM, Polyfuse, BERT, order alternating) after warm-up; medians reported.

FLOPs are counted analytically ("model FLOPs", as in MFU), with B batch, T padded tokens, D width,
F = mlp_ratio * D, L layers, a training step = 3x the forward (backward = 2x forward):
    per layer forward  = 2*B*T*(4*D^2 + 2*D*F)     (qkv, out proj, MLP GEMMs)
                       + 4*B*T^2*D                 (Q K^T and A V)
    Polyfuse stems     = 2*B*P*(3*p^2)*D + 2*B*Ta*(n_mels*k)*D   (P patches of side p, Ta audio tokens)
    BERT pooler        = 2*B*D^2;   both heads 2*B*D*K
FlopCounterMode's count of one step is printed as a cross-check (it does not see the CPU flash
attention kernel, so it is compared with the formula's non-attention part when that kernel runs).
The GEMM peak is the median rate of an N x N fp32 torch.matmul timed in the same interleaved loop.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polyfuse.config import Config                      # noqa: E402
from polyfuse.data.processors import Processors                      # noqa: E402
from polyfuse.model import PolyfuseModel                             # noqa: E402

N_CLASSES = 10


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--dropout", type=float, default=None, help="default: the config default")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=128, help="longest caption (text.max_length)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--audio-seconds", type=float, default=4.0)
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median reported)")
    p.add_argument("--steps", type=int, default=2, help="training steps per repetition")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per model")
    p.add_argument("--gemm-n", type=int, default=2048)
    # One thread: on a shared, oversubscribed 2-core machine a 2-thread OpenMP region waits at every
    # barrier for a descheduled thread, and step times swing 2-3x; one thread measures the per-core
    # efficiency of both models (and the GEMM peak) the same way. Pass --threads 2 on a quiet machine.
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_config(a) -> Config:
    model = {"d_model": a.d_model, "n_layers": a.layers, "n_heads": a.heads, "mlp_ratio": a.mlp_ratio,
             "fusion": "attention"}
    if a.dropout is not None:
        model["dropout"] = a.dropout
    return Config.from_dict({
        "schema": {"text": ["caption"], "image": ["img"], "audio": ["wav"], "label": "label",
                   "task": "classification"},
        "text": {"max_length": a.text_tokens},
        "image": {"size": a.image_size, "patch": a.patch},
        "audio": {"max_seconds": a.audio_seconds},
        "model": model})


def make_batch(cfg: Config, B: int, gen: torch.Generator) -> tuple[dict, Processors]:
    """Per-row items as the processors emit them, padded by the real collate. Row 0 is full length."""
    procs = Processors.build(cfg, cfg.schema)
    procs.text.fit(["a tiny corpus so the tokenizer has its special tokens"])
    Tt, Fa, k = cfg.text.max_length, cfg.audio.max_frames, cfg.audio.frames_per_token
    rows = []
    for i in range(B):
        nt = Tt if i == 0 else int(torch.randint(Tt // 2, Tt + 1, (1,), generator=gen))
        nf = Fa if i == 0 else k * int(torch.randint(Fa // (2 * k), Fa // k + 1, (1,), generator=gen))
        rows.append({"caption": {"ids": torch.randint(5, cfg.text.vocab_size, (nt,), generator=gen)},
                     "img": {"pixels": torch.randn(3, cfg.image.size, cfg.image.size, generator=gen)},
                     "wav": {"mel": torch.randn(cfg.audio.n_mels, nf, generator=gen)}})
    batch = {"inputs": procs.collate(rows), "label": torch.randint(0, N_CLASSES, (B,), generator=gen)}
    return batch, procs


def fused_mask(cfg: Config, batch: dict) -> torch.Tensor:
    """The key padding mask AttentionFusion builds: [CLS] + text + image + audio tokens. (B, T)"""
    inp = batch["inputs"]
    B = inp["caption"]["mask"].shape[0]
    n_patches = (cfg.image.size // cfg.image.patch) ** 2
    audio = inp["wav"]["mask"][:, :: cfg.audio.frames_per_token]
    return torch.cat([torch.ones(B, 1, dtype=torch.bool), inp["caption"]["mask"],
                      inp["img"]["present"][:, None].expand(-1, n_patches), audio], 1)


class BertClassifier(torch.nn.Module):
    def __init__(self, cfg: Config, T: int):
        super().__init__()
        from transformers import BertConfig, BertModel
        m = cfg.model
        bc = BertConfig(vocab_size=cfg.text.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                        num_attention_heads=m.n_heads, intermediate_size=int(m.d_model * m.mlp_ratio),
                        hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
                        max_position_embeddings=max(512, T), hidden_act="gelu")
        bc._attn_implementation = "sdpa"        # the default; explicit so the comparison is known
        self.bert = BertModel(bc)
        self.head = torch.nn.Linear(m.d_model, N_CLASSES)

    def forward(self, batch: dict) -> dict:
        out = self.bert(input_ids=batch["ids"], attention_mask=batch["mask"])
        logits = self.head(out.pooler_output)
        return {"loss": torch.nn.functional.cross_entropy(logits, batch["label"])}


def analytic_flops(cfg: Config, B: int, T: int, reference: bool) -> tuple[float, float]:
    """(training-step FLOPs, of which attention Q K^T / A V). See the module docstring."""
    m = cfg.model
    D, L, Fh = m.d_model, m.n_layers, int(m.d_model * m.mlp_ratio)
    attn = L * 4 * B * T * T * D
    fwd = L * 2 * B * T * (4 * D * D + 2 * D * Fh) + attn + 2 * B * D * N_CLASSES
    if reference:
        fwd += 2 * B * D * D
    else:
        n_patches = (cfg.image.size // cfg.image.patch) ** 2
        n_audio = cfg.audio.max_frames // cfg.audio.frames_per_token
        k = cfg.audio.frames_per_token
        fwd += 2 * B * n_patches * 3 * cfg.image.patch ** 2 * D + 2 * B * n_audio * cfg.audio.n_mels * k * D
    return 3.0 * fwd, 3.0 * attn


def train_step(model, opt, batch):
    opt.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()
    opt.step()


def counted_flops(model, opt, batch) -> float:
    with FlopCounterMode(display=False) as fc:
        train_step(model, opt, batch)
    return float(fc.get_total_flops())


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main():
    a = parse()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = make_config(a)
    batch, procs = make_batch(cfg, a.batch, gen)
    mask = fused_mask(cfg, batch)
    B, T = mask.shape
    ref_batch = {"ids": torch.randint(5, cfg.text.vocab_size, (B, T), generator=gen), "mask": mask.long(),
                 "label": batch["label"]}

    # A tokenizer trained on real captions has text.vocab_size entries; the ids above are drawn from it.
    pf = PolyfuseModel(cfg, cfg.schema, N_CLASSES, vocab_size=cfg.text.vocab_size).train()
    ref = BertClassifier(cfg, T).train()
    models = {"polyfuse": (pf, torch.optim.AdamW(pf.parameters(), lr=1e-4), batch),
              "bert": (ref, torch.optim.AdamW(ref.parameters(), lr=1e-4), ref_batch)}
    x, y = torch.randn(a.gemm_n, a.gemm_n, generator=gen), torch.randn(a.gemm_n, a.gemm_n, generator=gen)
    gemm_flops = 2.0 * a.gemm_n ** 3

    m = cfg.model
    print(f"config: d_model={m.d_model} layers={m.n_layers} heads={m.n_heads} mlp={int(m.d_model * m.mlp_ratio)} "
          f"dropout={m.dropout} batch={B} tokens/sample T={T} (1 cls + {cfg.text.max_length} text + "
          f"{(cfg.image.size // cfg.image.patch) ** 2} image + {cfg.audio.max_frames // cfg.audio.frames_per_token}"
          f" audio), real tokens {int(mask.sum())}/{B * T}; threads={torch.get_num_threads()}; "
          f"torch {torch.__version__}; load {os.getloadavg()[0]:.2f}")
    params = {k: sum(p.numel() for p in v[0].parameters()) for k, v in models.items()}
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))

    for name, (model, opt, b) in models.items():
        for _ in range(a.warmup):
            train_step(model, opt, b)
    timed(lambda: x @ y, 1)

    times = {"gemm": [], "polyfuse": [], "bert": []}
    for rep in range(a.reps):
        order = ["polyfuse", "bert"] if rep % 2 == 0 else ["bert", "polyfuse"]
        times["gemm"].append(timed(lambda: x @ y, 2))
        for name in order:
            model, opt, b = models[name]
            times[name].append(timed(lambda: train_step(model, opt, b), a.steps))
        print(f"  rep {rep}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = gemm_flops / med["gemm"]
    print(f"\nGEMM peak ({a.gemm_n}^3 fp32 matmul): {peak / 1e9:.1f} GFLOP/s (median of {a.reps})")
    res = {}
    for name in ("polyfuse", "bert"):
        flops, attn = analytic_flops(cfg, B, T, reference=name == "bert")
        model, opt, b = models[name]
        counted = counted_flops(model, opt, b)
        rate = flops / med[name]
        res[name] = rate
        spread = f"{min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f}"
        print(f"{name:9s} step {med[name] * 1e3:7.1f} ms (range {spread}) | {B / med[name]:7.1f} samples/s | "
              f"{B * T / med[name]:8.0f} tokens/s | {flops / 1e9:.1f} GFLOP/step (FlopCounterMode "
              f"{counted / 1e9:.1f}; formula without attention {(flops - attn) / 1e9:.1f}) | "
              f"{rate / 1e9:.1f} GFLOP/s = {rate / peak:.1%} of GEMM peak")
    speed = med["bert"] / med["polyfuse"]
    print(f"\nratios: polyfuse/bert throughput = {speed:.2f}x (target >= 1.1)  "
          f"polyfuse / GEMM peak = {res['polyfuse'] / peak:.1%} (target >= 40%)  "
          f"bert / GEMM peak = {res['bert'] / peak:.1%}")
    print(f"targets met: speed {'yes' if speed >= 1.1 else 'NO'}, "
          f"utilisation {'yes' if res['polyfuse'] / peak >= 0.4 else 'NO'}")


if __name__ == "__main__":
    main()
