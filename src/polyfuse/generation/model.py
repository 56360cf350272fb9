"""Fused tokens as the prefix of a causal language model (ClipCap, LLaVA, nanoVLM).

    row -> encoders -> fusion -> tokens (B, T, D) -> projector (MLP) -> prefix (B, P, H)
    [prefix | target text embeddings] -> decoder -> next-token loss on the target only

The prefix is packed to the left (each row's real tokens end at the same place, padding first),
which is how a batch of prompts is laid out for generation; positions count real tokens only, so
a row's prediction does not depend on how much padding its batch gave it, in training or in
`generate`. Attention fusion hands over its whole fused sequence; concat and late fusion one
vector per column.

An encoder-decoder decoder (Whisper, BART, T5: `config.is_encoder_decoder`) reads the fused tokens
through its cross-attention instead, as BLIP's text decoder reads image features:

    memory = [projector(fused tokens) | the states of the run's towers that are its own encoder]
    [start tokens | target] -> decoder (cross-attending to memory, padding masked) -> loss on the target

A tower of the decoder's own family and width (Whisper tiny.en's encoder as the audio tower,
Whisper tiny.en as the decoder) hands its states over untouched: the decoder's cross-attention
was trained on exactly those, so it transcribes from the first step, and the fused tokens add
what the other columns say. Beside such states the projector's last layer starts at zero, so fused
tokens enter as keys that favour nothing rather than as noise.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from ..config import Config, GenerateConfig, SchemaConfig
from ..encoders.pretrained import TowerEncoder
from ..errors import ConfigError
from ..fusion.fused import Fused
from ..fusion.transformer import init_weights
from ..model import PolyfuseModel
from .targets import pad_right

SCRATCH = "scratch"      # generate.decoder: a small decoder and tokenizer trained from the targets

# Attention projections LoRA adapts in common decoder families; others get every linear layer.
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "whisper": ["q_proj", "v_proj"],
                "bart": ["q_proj", "v_proj"], "t5": ["q", "v"]}

# Encoder-decoder families whose decoder takes no mask over the memory (Whisper always pads to
# 30 s): model_type -> the decoder's cross-attention modules, which get the mask by a hook.
UNMASKED_MEMORY = {"whisper": lambda lm: [layer.encoder_attn for layer in lm.model.decoder.layers]}


def load_decoder(path_or_config, with_weights: bool):
    """A transformers decoder: pretrained weights from a folder (training), or the architecture
    alone from the run's saved config (reloading; the weights come from model.safetensors).
    A causal LM, or the sequence-to-sequence model of an encoder-decoder config (speech or text)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING
    try:
        config = transformers.AutoConfig.from_pretrained(path_or_config) if with_weights else path_or_config
        if not config.is_encoder_decoder:
            auto = transformers.AutoModelForCausalLM
        elif type(config) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING:
            auto = transformers.AutoModelForSpeechSeq2Seq
        else:
            auto = transformers.AutoModelForSeq2SeqLM
        lm = auto.from_pretrained(path_or_config) if with_weights else auto.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.decoder: cannot build a causal or encoder-decoder language model: "
                          f"{str(e).splitlines()[0]}") from None
    # Generation settings from the model config alone, fresh or reloaded (a run saves the config,
    # not generation_config.json): the same text either way.
    lm.generation_config = transformers.GenerationConfig.from_model_config(lm.config)
    if config.is_encoder_decoder:
        _drop_own_encoder(lm)
    return lm


def _drop_own_encoder(lm: nn.Module):
    """An encoder-decoder's own encoder never runs here (the memory comes from Polyfuse's encoders
    and fusion): removed, so its weights are neither held nor saved twice."""
    encoder = lm.get_encoder()
    for name, module in lm.named_modules():
        for child_name, child in module.named_children():
            if child is encoder:
                setattr(module, child_name, None)
                return


class MemoryMask:
    """Holds the memory's additive mask (B, 1, 1, S) while a decoder without a memory-mask argument
    runs; a pre-hook on each cross-attention hands it over, repeated for beams."""

    def __init__(self):
        self.bias: torch.Tensor | None = None

    def hook(self, module, args, kwargs):
        if self.bias is not None:
            n = (args[0] if args else kwargs["hidden_states"]).shape[0]
            kwargs["attention_mask"] = self.bias.repeat_interleave(n // self.bias.shape[0], 0)
        return args, kwargs

    @contextmanager
    def masked(self, mask: torch.Tensor, dtype: torch.dtype):
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        self.bias = bias[:, None, None, :]
        try:
            yield
        finally:
            self.bias = None


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


def own_family(decoder_config, model_type: str, width: int) -> bool:
    """A tower whose states an encoder-decoder's cross-attention was trained on: the decoder's own
    family and width (Whisper tiny.en's encoder for Whisper tiny.en's decoder)."""
    return bool(decoder_config.is_encoder_decoder) and model_type == decoder_config.model_type \
        and width == decoder_config.hidden_size


class GenerationModel(nn.Module):
    def __init__(self, cfg: Config, schema: SchemaConfig, lm: nn.Module, vocab_size: int | None = None,
                 towers: dict | None = None, start_ids: list[int] = ()):
        """start_ids: an encoder-decoder decoder's first input tokens (TextTargets.start_ids)."""
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
        self.seq2seq = bool(lm.config.is_encoder_decoder)
        if self.seq2seq:
            if not start_ids:
                raise ConfigError("an encoder-decoder decoder needs its start tokens (config.decoder_start_token_id)")
            if cfg.generate.prompt is not None:
                raise ConfigError("generate.prompt is for causal language models; with an encoder-decoder decoder "
                                  "make the prompt's column a text input instead")
            self.register_buffer("start_ids", torch.tensor(list(start_ids), dtype=torch.long), persistent=False)
            # Modalities whose tower is of the decoder's own family and width: their states join the memory.
            self.own = {m for m, enc in self.body.encoders.items() if isinstance(enc, TowerEncoder) and enc.hf
                        and own_family(lm.config, enc.model_type, enc.feature_width)}
            if self.own:        # beside states the decoder knows, fused tokens start as keys that favour nothing
                nn.init.zeros_(self.projector[-1].weight)
                nn.init.zeros_(self.projector[-1].bias)
            self._memory_mask = MemoryMask() if lm.config.model_type in UNMASKED_MEMORY else None
            if self._memory_mask is not None:
                for attn in UNMASKED_MEMORY[lm.config.model_type](lm):
                    attn.register_forward_pre_hook(self._memory_mask.hook, with_kwargs=True)
        # generate.ctc: a CTC head over the audio column's fused tokens, its blank the last class.
        self.ctc_column = None
        if cfg.generate.ctc:
            if len(schema.audio) != 1:
                raise ConfigError(f"generate.ctc aligns the target with one audio column; this run has "
                                  f"{len(schema.audio)} ({', '.join(schema.audio) or 'none'})")
            self.ctc_column = schema.audio[0]
            self.ctc_head = nn.Linear(d, lm.get_input_embeddings().num_embeddings + 1)
        self.lm = lm
        # LLaVA's first stage (the projector alone) exists because a fresh projector's prefix is
        # noise; a decoder reading its own encoder's states has something real from the first step.
        self.needs_first_stage = not (self.seq2seq and self.own)
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

    def lr_scales(self) -> dict[nn.Module, float]:
        """{module: share of train.lr} for Trainer: a pretrained decoder trained whole learns slowly
        (generate.decoder_lr_scale); LoRA adapters and a scratch decoder are new weights, full rate."""
        if decoder_training(self.cfg) == "full" and self.cfg.generate.decoder != SCRATCH:
            return {self.lm: self.cfg.generate.decoder_lr_scale}
        return {}

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

    def read(self, inputs: dict, modality_dropout: float = 0.0) -> tuple[dict, Fused]:
        """The columns through their encoders, then the fusion: (encoded columns, fused)."""
        encoded = self.body.encode_columns(inputs, modality_dropout=modality_dropout)
        return encoded, self.body.fuse(encoded)

    def projected(self, fused: Fused) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H) the fused tokens in the decoder's space, (B, T) their real positions."""
        if fused.tokens is not None:
            states, mask = fused.tokens, fused.mask                                   # (B, T, D)
        else:
            states = torch.stack(list(fused.per_column.values()), 1)                  # (B, C, D)
            mask = torch.stack([fused.present[c] for c in fused.per_column], 1)
        if self.resampler is not None:
            states, mask = self.resampler(states, mask)                               # (B, K, D)
        return self.projector(states), mask                                           # (B, T, H)

    def memory(self, inputs: dict, modality_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        return self._memory(*self.read(inputs, modality_dropout))

    def _memory(self, encoded: dict, fused: Fused) -> tuple[torch.Tensor, torch.Tensor]:
        """An encoder-decoder decoder's memory (B, S, H) and its real positions (B, S): the projected
        fused tokens, then each own-family tower column's states as the tower gave them."""
        x, mask = self.projected(fused)
        own = [e for e in encoded.values() if e["modality"] in self.own]
        x = torch.cat([x] + [e["features"] for e in own], 1)                          # (B, S, H)
        mask = torch.cat([mask] + [e["mask"] for e in own], 1)
        # A row with nothing to read (every column missing) attends to its first position rather
        # than to nothing (a softmax over no keys is NaN).
        mask[~mask.any(1), 0] = True
        return x, mask

    def prefix(self, inputs: dict, modality_dropout: float = 0.0,
               prompt: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._prefix(self.read(inputs, modality_dropout)[1], prompt)

    def _prefix(self, fused: Fused, prompt: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, H) decoder-space prefix, (B, P) its real positions, packed to the left: the fused
        tokens through the projector, then the prompt's token embeddings when there is a prompt."""
        x, mask = self.projected(fused)
        if prompt is not None:
            x = torch.cat([x, self.lm.get_input_embeddings()(prompt["ids"])], 1)      # (B, T + Q, H)
            mask = torch.cat([mask, prompt["mask"]], 1)
        return left_pack(x, mask)

    def ctc_logits(self, encoded: dict, fused: Fused) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V + 1) the CTC head over the audio column's tokens (blank last), (B, T) real ones
        first: its fused states where the fusion keeps tokens (what the decoder reads), its
        encoder's tokens otherwise (concat, late fusion)."""
        col = self.ctc_column
        if col in fused.spans:
            a, b = fused.spans[col]
            states = fused.tokens[:, a:b]                                              # (B, T, D)
        else:
            states = encoded[col]["tokens"]
        return self.ctc_head(states), encoded[col]["mask"]

    def ctc_loss(self, encoded: dict, fused: Fused, ids: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
        """CTC of the target (end-of-text left out) against the audio column's tokens, per target
        token, averaged over the rows that have the clip."""
        logits, mask = self.ctc_logits(encoded, fused)                                 # (B, T, V + 1), (B, T)
        lengths = tmask.sum(1) - 1                                                     # (B,) without end-of-text
        rows = mask.any(1) & (lengths > 0)
        logp = F.log_softmax(logits[rows].float(), -1)                                 # (N, T, V + 1)
        if not rows.any():
            return logp.sum()                    # 0, still part of the graph (DDP wants every parameter used)
        # zero_infinity: a clip with fewer tokens than its transcript needs adds nothing, not inf.
        return F.ctc_loss(logp.transpose(0, 1), ids[rows], mask[rows].sum(1), lengths[rows],
                          blank=logp.shape[-1] - 1, zero_infinity=True)

    def forward(self, batch: dict, modality_dropout: float = 0.0) -> dict:
        """{"loss": what training minimises, "lm_loss": mean next-token cross-entropy over the
        target tokens, "ctc": the CTC loss (generate.ctc; 0 when off), "tokens": how many,
        "correct": how many of them are the argmax given the true tokens before (teacher forcing)}."""
        ids, tmask = batch["target"]["ids"], batch["target"]["mask"]                  # (B, L)
        encoded, fused = self.read(batch["inputs"], modality_dropout)
        pred = self.next_token_logits(encoded, fused, ids, tmask, batch.get("prompt"))  # (B, L, V)
        scored = pred[tmask]                                                          # (N, V)
        lm_loss = F.cross_entropy(scored.float(), ids[tmask])
        ctc = self.ctc_loss(encoded, fused, ids, tmask) if self.ctc_column else lm_loss.new_zeros(())
        return {"loss": lm_loss + self.cfg.generate.ctc * ctc, "lm_loss": lm_loss, "ctc": ctc,
                "tokens": int(tmask.sum()), "correct": int((scored.argmax(-1) == ids[tmask]).sum())}

    def next_token_logits(self, encoded: dict, fused: Fused, ids: torch.Tensor, tmask: torch.Tensor,
                          prompt: dict | None = None, repeat: int = 1) -> torch.Tensor:
        """(B * repeat, L, V): at t, the decoder's logits for target token t given the tokens before
        it (teacher forcing). repeat: each input row is read by `repeat` consecutive target rows
        (the hypotheses of one clip), so the encoders run once per input."""
        rep = (lambda t: t.repeat_interleave(repeat, 0)) if repeat > 1 else (lambda t: t)   # noqa: E731
        if self.seq2seq:
            memory, mmask = self._memory(encoded, fused)
            memory, mmask = rep(memory), rep(mmask)
            start = self.start_ids[None].expand(ids.shape[0], -1)                     # (B, S)
            dec = torch.cat([start, ids], 1)                                          # (B, S + L)
            dmask = torch.cat([torch.ones_like(start), tmask.long()], 1)
            with self._memory_masked(mmask, memory.dtype):
                logits = self.lm(encoder_outputs=_encoder_output(memory), decoder_input_ids=dec,
                                 decoder_attention_mask=dmask, attention_mask=mmask.long()).logits
            P = start.shape[1]
        else:
            prefix, pmask = self._prefix(fused, prompt)
            prefix, pmask = rep(prefix), rep(pmask)
            x = torch.cat([prefix, self.lm.get_input_embeddings()(ids)], 1)           # (B, P + L, H)
            attn = torch.cat([pmask, tmask], 1).long()
            logits = self.lm(inputs_embeds=x, attention_mask=attn, position_ids=positions(attn)).logits
            P = prefix.shape[1]
        return logits[:, P - 1:-1]                     # position P-1+t predicts target token t

    def _memory_masked(self, mask: torch.Tensor, dtype: torch.dtype):
        """transformers' encoder-decoders take the memory mask as attention_mask; the families in
        UNMASKED_MEMORY ignore it once the memory is given, and get it by hook in this context."""
        return self._memory_mask.masked(mask, dtype) if self._memory_mask is not None else nullcontext()

    @torch.no_grad()
    def generate(self, inputs: dict, g: GenerateConfig, eos_id: int, pad_id: int, streamer=None,
                 prompt: dict | None = None) -> list[list[int]]:
        """New token ids per row (transformers' generate: greedy, beam search or sampling, KV cache).
        With generate.ctc_rescore, every beam comes back and the CTC head helps choose (rescored)."""
        rescore = self.ctc_column is not None and g.ctc_rescore > 0 and g.num_beams > 1 and not g.do_sample
        n = g.num_beams if rescore else 1
        encoded, fused = self.read(inputs)
        kw = dict(max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, do_sample=g.do_sample,
                  temperature=g.temperature if g.do_sample else None, top_p=g.top_p if g.do_sample else None,
                  eos_token_id=eos_id, pad_token_id=pad_id, streamer=streamer, num_return_sequences=n)
        if self.seq2seq:
            from transformers import GenerationMixin
            memory, mmask = self._memory(encoded, fused)
            start = self.start_ids[None].expand(memory.shape[0], -1)
            # GenerationMixin's own generate, not a family's override (Whisper's wants 30-second
            # log-mel input and segments long audio): the memory is ready, only the decoding loop is wanted.
            with self._memory_masked(mmask, memory.dtype):
                out = GenerationMixin.generate(self.lm, encoder_outputs=_encoder_output(memory),
                                               decoder_input_ids=start, attention_mask=mmask.long(), **kw)
            rows = [row[start.shape[1]:].tolist() for row in out]
        else:
            prefix, pmask = self._prefix(fused, prompt)
            # transformers derives positions from the mask the same way `positions` does (checked in tests).
            out = self.lm.generate(inputs_embeds=prefix, attention_mask=pmask.long(), **kw)
            rows = [row.tolist() for row in out]
        return self._rescored(encoded, fused, prompt, rows, n, g.ctc_rescore, eos_id, pad_id) if rescore else rows

    def _rescored(self, encoded: dict, fused: Fused, prompt: dict | None, rows: list[list[int]], n: int,
                  weight: float, eos_id: int, pad_id: int) -> list[list[int]]:
        """Each input's n beams (consecutive in rows) -> the one with the best (1 - weight) x the
        decoder's log-likelihood + weight x the CTC head's, both of the whole text (joint
        CTC/attention decoding as n-best rescoring, as ESPnet's recognisers decode). The decoder
        alone can write a fluent text the clip does not hold: a digit too many or one it heard
        in the training voices; CTC must account for every stretch of the clip in order."""
        device = fused.pooled.device
        hyps = [torch.tensor(r[:r.index(eos_id) + 1] if eos_id in r else r + [eos_id], device=device) for r in rows]
        padded = pad_right(hyps, pad_id)
        ids, tmask = padded["ids"], padded["mask"]                                      # (B * n, L)
        pred = self.next_token_logits(encoded, fused, ids, tmask, prompt, repeat=n)   # (B * n, L, V)
        lm = (F.log_softmax(pred.float(), -1).gather(-1, ids[..., None])[..., 0] * tmask).sum(1)   # (B * n,)
        logits, amask = self.ctc_logits(encoded, fused)                                # (B, T, V + 1)
        logp = F.log_softmax(logits.float(), -1).repeat_interleave(n, 0)
        amask = amask.repeat_interleave(n, 0)
        # Not zero_infinity: a text the clip is too short for is impossible (-inf), not free.
        ctc = -F.ctc_loss(logp.transpose(0, 1), ids, amask.sum(1), tmask.sum(1) - 1,
                          blank=logp.shape[-1] - 1, reduction="none")                   # (B * n,)
        ctc = torch.where(amask.any(1), ctc, torch.zeros_like(ctc))        # a row without the clip: the decoder alone
        best = ((1 - weight) * lm + weight * ctc).view(-1, n).argmax(1)                 # (B,)
        return [rows[b * n + int(k)] for b, k in enumerate(best)]


def _encoder_output(memory: torch.Tensor):
    from transformers.modeling_outputs import BaseModelOutput
    return BaseModelOutput(last_hidden_state=memory)


def positions(attn: torch.Tensor) -> torch.Tensor:
    """(B, L) position of each token among its row's real tokens (padding: 0)."""
    return (attn.cumsum(1) - 1).clamp_min(0)
