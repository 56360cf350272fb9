"""Fused tokens as the prefix of a causal language model (ClipCap, LLaVA, nanoVLM).

    row -> encoders -> fusion -> tokens (B, T, D) -> projector (MLP) -> prefix (B, P, H)
    [prefix | target text embeddings] -> decoder -> next-token loss on the target only

The prefix is packed to the left (each row's real tokens end at the same place, padding first),
which is how a batch of prompts is laid out for generation; positions count real tokens only, so
a row's prediction does not depend on how much padding its batch gave it, in training or in
`generate`. Attention fusion hands over its whole fused sequence; concat and late fusion one
vector per column.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import Config, GenerateConfig, SchemaConfig
from ..errors import ConfigError
from ..fusion.transformer import init_weights
from ..model import PolyfuseModel

SCRATCH = "scratch"      # generate.decoder: a small decoder and tokenizer trained from the targets

# Attention projections LoRA adapts in common decoder families; others get every linear layer.
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}


def load_decoder(path_or_config, with_weights: bool):
    """A transformers causal LM: pretrained weights from a folder (training), or the architecture
    alone from the run's saved config (reloading; the weights come from model.safetensors)."""
    import transformers
    try:
        if with_weights:
            return transformers.AutoModelForCausalLM.from_pretrained(path_or_config)
        return transformers.AutoModelForCausalLM.from_config(path_or_config)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.decoder: cannot build a causal language model: {str(e).splitlines()[0]}") from None


def decoder_training(cfg: Config) -> str:
    """What of the decoder trains: generate.decoder_train, but all of a scratch decoder (nothing in it to keep)."""
    return "full" if cfg.generate.decoder == SCRATCH else cfg.generate.decoder_train


def first_stage_epochs(cfg: Config, planned: int) -> int:
    """Epochs that train the projector before a pretrained decoder learns too (0: one stage).
    At least one epoch is left for the second stage."""
    if decoder_training(cfg) == "frozen" or cfg.generate.decoder == SCRATCH or not cfg.generate.first_stage:
        return 0
    return max(0, min(planned - 1, max(1, round(cfg.generate.first_stage * planned))))


def left_pack(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D), (B, T) -> the same tokens with each row's real ones moved to the right end, in order."""
    B, T = mask.shape
    n = mask.sum(1, keepdim=True)                                            # (B, 1)
    rank = mask.long().cumsum(1) - 1                                         # index among real tokens
    dest = torch.where(mask, T - n + rank, torch.zeros_like(rank))          # (B, T) target slot
    packed = torch.zeros_like(states)
    packed_mask = torch.arange(T, device=mask.device)[None] >= (T - n)       # (B, T)
    rows = torch.arange(B, device=mask.device)[:, None].expand(B, T)
    packed[rows[mask], dest[mask]] = states[mask]
    return packed, packed_mask


class Resampler(nn.Module):
    """K learned queries read a variable number of fused tokens: (B, T, D), (B, T) -> (B, K, D), (B, K).
    One pre-norm cross-attention and an MLP, residual on the queries. A row with no real token
    (every column missing) gets no prefix positions."""

    def __init__(self, d: int, k: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(k, d) * 0.02)
        self.norm_q, self.norm_kv, self.norm_out = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = states.shape[0]
        empty = ~mask.any(1)                                                     # (B,)
        mask = mask.clone()
        mask[empty, 0] = True                   # attend somewhere (no NaN); these rows are dropped below
        q = self.queries[None].expand(B, -1, -1)                                 # (B, K, D)
        kv = self.norm_kv(states)
        x = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=~mask, need_weights=False)[0]
        x = x + self.mlp(x)
        out_mask = (~empty)[:, None].expand(B, x.shape[1])                       # (B, K)
        return self.norm_out(x), out_mask


class GenerationModel(nn.Module):
    def __init__(self, cfg: Config, schema: SchemaConfig, lm: nn.Module, vocab_size: int | None = None,
                 towers: dict | None = None):
        super().__init__()
        self.cfg = cfg
        # The encoders and fusion every other task uses; its one-wide task head stays unused.
        self.body = PolyfuseModel(cfg, schema, 1, vocab_size, towers)
        hidden = lm.get_input_embeddings().embedding_dim
        d = cfg.model.d_model
        k = cfg.generate.prefix_tokens
        self.resampler = Resampler(d, k, cfg.model.n_heads) if k else None
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        init_weights(self.projector)
        self.lm = lm
        how = decoder_training(cfg)
        if how == "lora":
            from peft import LoraConfig, inject_adapter_in_model
            targets = LORA_TARGETS.get(lm.config.model_type, "all-linear")
            self.lm = inject_adapter_in_model(LoraConfig(r=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha,
                                                         target_modules=targets), lm)
        # The decoder weights this run may train (none, its LoRA adapters, or all of them).
        self._decoder_params = [p for name, p in self.lm.named_parameters()
                                if how == "full" or (how == "lora" and "lora_" in name)]
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.decoder_trains = False
        self.train_decoder(bool(self._decoder_params))

    def train_decoder(self, on: bool):
        """Two-stage training: off, only the encoders, fusion and projector learn (the decoder's
        trainable weights get no gradient, so the optimizer leaves them as they are); on, they learn too."""
        self.decoder_trains = on and bool(self._decoder_params)
        for p in self._decoder_params:
            p.requires_grad_(self.decoder_trains)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.decoder_trains:
            self.lm.eval()              # a decoder that does not learn: no dropout, the same function every step
        return self

    def prefix(self, inputs: dict, modality_dropout: float = 0.0,
               prompt: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, H) decoder-space prefix, (B, P) its real positions, packed to the left: the fused
        tokens through the projector, then the prompt's token embeddings when there is a prompt."""
        fused = self.body.encode(inputs, modality_dropout=modality_dropout)
        if fused.tokens is not None:
            states, mask = fused.tokens, fused.mask                                   # (B, T, D)
        else:
            states = torch.stack(list(fused.per_column.values()), 1)                  # (B, C, D)
            mask = torch.stack([fused.present[c] for c in fused.per_column], 1)
        if self.resampler is not None:
            states, mask = self.resampler(states, mask)                               # (B, K, D)
        x = self.projector(states)                                                    # (B, T, H)
        if prompt is not None:
            x = torch.cat([x, self.lm.get_input_embeddings()(prompt["ids"])], 1)      # (B, T + Q, H)
            mask = torch.cat([mask, prompt["mask"]], 1)
        return left_pack(x, mask)

    def forward(self, batch: dict, modality_dropout: float = 0.0) -> dict:
        """{"loss": mean next-token cross-entropy over the target tokens, "tokens": how many}."""
        prefix, pmask = self.prefix(batch["inputs"], modality_dropout, batch.get("prompt"))
        ids, tmask = batch["target"]["ids"], batch["target"]["mask"]                  # (B, L)
        x = torch.cat([prefix, self.lm.get_input_embeddings()(ids)], 1)               # (B, P + L, H)
        attn = torch.cat([pmask, tmask], 1).long()
        logits = self.lm(inputs_embeds=x, attention_mask=attn, position_ids=positions(attn)).logits
        P = prefix.shape[1]
        pred = logits[:, P - 1:-1]                     # position P-1+t predicts target token t
        loss = F.cross_entropy(pred[tmask].float(), ids[tmask])
        return {"loss": loss, "tokens": int(tmask.sum())}

    @torch.no_grad()
    def generate(self, inputs: dict, g: GenerateConfig, eos_id: int, pad_id: int, streamer=None,
                 prompt: dict | None = None) -> list[list[int]]:
        """New token ids per row (transformers' generate: greedy, beam search or sampling, KV cache)."""
        prefix, pmask = self.prefix(inputs, prompt=prompt)
        attn = pmask.long()
        # transformers derives positions from the mask the same way `positions` does (checked in tests).
        out = self.lm.generate(inputs_embeds=prefix, attention_mask=attn,
                               max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, do_sample=g.do_sample,
                               temperature=g.temperature if g.do_sample else None,
                               top_p=g.top_p if g.do_sample else None, eos_token_id=eos_id, pad_token_id=pad_id,
                               streamer=streamer)
        return [row.tolist() for row in out]


def positions(attn: torch.Tensor) -> torch.Tensor:
    """(B, L) position of each token among its row's real tokens (padding: 0)."""
    return (attn.cumsum(1) - 1).clamp_min(0)
