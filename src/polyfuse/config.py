"""The config tree: one dataclass per concern, validated once when it is built.

Every default lives here and nowhere else. The CLI and the Python API pass only
the values a user actually set (None means "not given"), so a default is never
retyped. Named sizes (tiny/small/base) are YAML files in `configs/sizes/`.
"""
from __future__ import annotations

import re

import dataclasses
import string
import difflib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError

MODALITIES = ("text", "image", "audio")
TASKS = ("classification", "multilabel", "regression", "generation")
FUSIONS = ("attention", "concat", "late")
OBJECTIVES = ("contrastive", "itm", "mlm", "masked_patch")    # pretraining objectives, in the order they run


@dataclass
class SchemaConfig:
    """Which column is which modality, and what the label is."""
    text: list[str] = field(default_factory=list)
    image: list[str] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    label: str | None = None
    task: str | None = None          # inferred from the label column when None

    def validate(self):
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"schema.task must be one of {TASKS}, got {self.task!r}")
        seen = {}
        for m in MODALITIES:
            for col in getattr(self, m):
                if col in seen:
                    raise ConfigError(f"column '{col}' is given as both {seen[col]} and {m}")
                seen[col] = m
        if self.label is not None and self.label in seen:
            raise ConfigError(f"column '{self.label}' is both the label and a {seen[self.label]} input")

    def streams(self) -> list[tuple[str, str]]:
        """(column, modality) in a fixed order: the order tokens are concatenated in."""
        return [(c, m) for m in MODALITIES for c in getattr(self, m)]

    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m)]


@dataclass
class TextConfig:
    max_length: int = 64
    vocab_size: int = 8000
    # bpe | wordpiece, trained on the training texts. BPE by default: its training is reproducible,
    # while WordPiece training numbers "##" pieces in hash-map order (huggingface/tokenizers#1794),
    # so the same data and seed can give another vocabulary.
    tokenizer: str = "bpe"
    lowercase: bool = True
    tokenizer_path: str | None = None  # a folder or tokenizer.json to use instead of training one
    encoder: str = "scratch"         # scratch | word2vec | a Hugging Face model folder or hub id
    word2vec_vectors: str | None = None  # with encoder word2vec: a saved KeyedVectors file instead of training

    def validate(self):
        if self.tokenizer not in ("wordpiece", "bpe"):
            raise ConfigError(f"text.tokenizer must be 'wordpiece' or 'bpe', got {self.tokenizer!r}")
        _positive(self, "max_length", "vocab_size")
        _check_encoder("text", self.encoder, ("scratch", "word2vec"))
        if self.word2vec_vectors is not None and self.encoder != "word2vec":
            raise ConfigError("text.word2vec_vectors needs text.encoder: word2vec")


@dataclass
class ImageConfig:
    size: int = 32                   # images are resized to size x size
    patch: int = 8                   # patch side; size must be a multiple
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    stem: str = "linear"             # linear: one projection per patch; conv: stride-2 convolutions;
    #                                  cnn: residual GroupNorm blocks per resolution (encoders/cnn_stem.py)
    stem_width: int = 16             # cnn: channels at full resolution, doubled per halving
    stem_blocks: int = 1             # cnn: residual blocks per resolution
    stem_norm: str = "group"         # cnn: group (batch-independent) | batch (trains better from scratch;
    #                                  absent images are left out of its batch statistics)
    stem_downsample: str = "conv"    # cnn: conv (stride-2 3x3) | max (2x2 max-pool, then a 3x3 conv)
    max_pixels: int = 40_000_000     # decompression-bomb guard, checked before decoding
    # How an image becomes size x size: squash (resize, ignoring the aspect ratio), crop (resize
    # the short side to size, keep the centre) or pad (resize the long side, pad with the mean).
    resize: str = "squash"
    encoder: str = "scratch"         # scratch | a Hugging Face model folder or hub id

    def validate(self):
        _positive(self, "size", "patch", "max_pixels")
        if self.resize not in ("squash", "crop", "pad"):
            raise ConfigError(f"image.resize must be 'squash', 'crop' or 'pad', got {self.resize!r}")
        _check_encoder("image", self.encoder, ("scratch",))
        if self.size % self.patch:
            raise ConfigError(f"image.size ({self.size}) must be a multiple of image.patch ({self.patch})")
        if self.stem not in ("linear", "conv", "cnn"):
            raise ConfigError(f"image.stem must be 'linear', 'conv' or 'cnn', got {self.stem!r}")
        if self.stem in ("conv", "cnn") and self.patch & (self.patch - 1):
            raise ConfigError(f"image.stem {self.stem!r} needs a power-of-two image.patch")
        _positive(self, "stem_width")
        if self.stem_downsample not in ("conv", "max"):
            raise ConfigError(f"image.stem_downsample must be 'conv' or 'max', got {self.stem_downsample!r}")
        if self.stem_norm not in ("group", "batch"):
            raise ConfigError(f"image.stem_norm must be 'group' or 'batch', got {self.stem_norm!r}")
        if self.stem_blocks < 0:
            raise ConfigError(f"image.stem_blocks must be >= 0, got {self.stem_blocks}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("image.mean and image.std need three values, std > 0")


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 400                 # 25 ms at 16 kHz
    hop_length: int = 160            # 10 ms
    max_seconds: float = 4.0         # longer clips are cropped to this
    max_file_seconds: float = 600.0  # longer files are refused before decoding
    frames_per_token: int = 4        # spectrogram frames per audio token
    stem: str = "linear"             # linear | conv (1-D over frames) | cnn (2-D over bands and frames)
    stem_width: int = 16             # cnn: channels of the first stage, doubled twice
    encoder: str = "scratch"         # scratch | a Hugging Face model folder or hub id
    # "clip": each clip's mean log-mel is subtracted before the training statistics apply, so a
    # recording's level (microphone gain, distance) is not a feature. "band": each mel band's mean
    # over the clip is subtracted (cepstral mean normalisation), so the microphone's and the room's
    # frequency response is not a feature either. "none" keeps both.
    level: str = "none"
    # Towers that read each clip at its own length (Whisper, encoders/whisper.py): a shorter clip is
    # followed by silence up to this many seconds before the tower reads it; only the clip's own
    # positions become tokens. Whisper learnt on 30-s windows: a 0.5-s clip alone (25 positions)
    # gives features that carry over worse to new voices (bench/whisper_context_probe.py, spoken
    # digits, one speaker held out at a time: mean 0.940 alone, 0.991 with 5 s; 2 and 10 s about
    # as good, the whole 30 s no better), and each second costs compute once per clip (the frozen
    # tower's features are cached). 0: the clip alone.
    tower_min_seconds: float = 5.0

    def validate(self):
        _positive(self, "sample_rate", "n_mels", "n_fft", "hop_length", "max_seconds",
                  "max_file_seconds", "frames_per_token", "stem_width")
        if not 0.0 <= self.tower_min_seconds <= 30.0:
            raise ConfigError(f"audio.tower_min_seconds must be in [0, 30], got {self.tower_min_seconds}")
        _check_encoder("audio", self.encoder, ("scratch",))
        if self.level not in ("none", "clip", "band"):
            raise ConfigError(f"audio.level must be 'none', 'clip' or 'band', got {self.level!r}")
        if self.stem not in ("linear", "conv", "cnn"):
            raise ConfigError(f"audio.stem must be 'linear', 'conv' or 'cnn', got {self.stem!r}")
        if self.stem in ("conv", "cnn") and self.frames_per_token & (self.frames_per_token - 1):
            raise ConfigError(f"audio.stem {self.stem!r} needs a power-of-two audio.frames_per_token")

    @property
    def max_frames(self) -> int:
        """Frames of the longest (cropped) clip, rounded up to whole tokens."""
        frames = int(self.max_seconds * self.sample_rate) // self.hop_length + 1
        return -(-frames // self.frames_per_token) * self.frames_per_token


@dataclass
class ModelConfig:
    size: str | None = None          # a named size from configs/sizes; its values fill the fields below
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    fusion: str = "attention"        # attention | concat | late
    modality_dropout: float = 0.0    # chance of dropping each modality of a training row
    # Modality balance (model.py): every training row is also predicted from each modality alone,
    # through the same fusion and head, and those losses added (weight aux_weight, 0 = none);
    # ogm_alpha > 0 also slows the fused loss's gradient into whichever modality alone is ahead
    # (on-the-fly gradient modulation, Peng et al. CVPR 2022). Both are off without two modalities.
    aux_weight: float = 0.0
    ogm_alpha: float = 0.0
    # Predict with the mean of the fused logits and each modality's alone (a product of experts):
    # robust when one modality is misleading on new data (an unseen speaker). M + 1 fusion passes.
    ensemble: bool = False
    # Pretrained towers (text/image/audio.encoder set to a model folder or hub id):
    freeze_encoders: bool = False    # towers' weights stay fixed; their projections to d_model still train
    unfreeze_top_k: int = 0          # with freeze_encoders: train the top k layers of each tower again
    lora: bool = False               # train LoRA adapters (peft) on frozen towers instead
    lora_rank: int = 8
    lora_alpha: float = 16.0
    feature_cache: bool = True       # fully frozen towers: compute each input's tower output once
    feature_cache_dir: str = "~/.cache/polyfuse/features"
    # Share of a pretrained tower's output tokens left out of each training row (at least one kept;
    # FLIP's patch dropout, on features): the augmentation a cached frozen tower still allows, since
    # its inputs must stay exact to hit the cache. Inference reads every token.
    tower_token_drop: float = 0.0

    @property
    def towers_fully_frozen(self) -> bool:
        """Towers neither trained nor adapted: their outputs are fixed features (cached when feature_cache)."""
        return self.freeze_encoders and not self.unfreeze_top_k and not self.lora

    def validate(self):
        _positive(self, "d_model", "n_layers", "n_heads", "mlp_ratio", "lora_rank", "lora_alpha")
        if self.unfreeze_top_k < 0:
            raise ConfigError(f"model.unfreeze_top_k must be >= 0, got {self.unfreeze_top_k}")
        if self.unfreeze_top_k and not self.freeze_encoders:
            raise ConfigError("model.unfreeze_top_k needs model.freeze_encoders: true (it unfreezes the top "
                              "layers of frozen towers)")
        if self.lora and self.unfreeze_top_k:
            raise ConfigError("model.lora and model.unfreeze_top_k cannot be combined: choose one way to adapt towers")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for name in ("dropout", "modality_dropout", "tower_token_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.aux_weight < 0 or self.ogm_alpha < 0:
            raise ConfigError("model.aux_weight and model.ogm_alpha must be >= 0")
        if self.ogm_alpha > 0 and self.aux_weight == 0:
            raise ConfigError("model.ogm_alpha needs model.aux_weight > 0: the unimodal predictions tell "
                              "which modality is ahead")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = False
    # Epochs without validation improvement before stopping; with fill_budget, at least a quarter
    # of the epochs planned.
    patience: int | None = 5
    max_minutes: float | None = None
    # With max_minutes: time the first steps and choose the number of epochs (and the schedule's
    # length) that fills the budget; `epochs` is then unused. Early stopping still applies.
    fill_budget: bool = False
    on_bad_row: str = "error"        # error | skip
    label_smoothing: float = 0.0
    # Without a validation table, this share of the training rows is held out (stratified by the
    # label) — whole groups of group_by: a column name (a speaker, a patient, a source), "auto"
    # (the column that looks like one, planning/split.py), or "none" (rows). Rows by default: a
    # held-out group is a group the model never trains on, which costs when the test rows come
    # from the same groups (avdigits' shared split: 0.999 by rows, 0.996 by speaker).
    # 0 = train on every row.
    val_fraction: float = 0.1
    group_by: str = "none"
    # Also checkpoint every this many optimizer steps inside an epoch (with the position in it), so
    # a killed run on a long epoch loses at most these steps; None: after each epoch only.
    checkpoint_every: int | None = None
    # Validate, keep and save an exponential moving average of the weights over about this many
    # epochs of steps instead of the last step's (training/average.py); 0: off.
    ema_epochs: float = 0.0

    def validate(self):
        _positive(self, "epochs", "batch_size", "lr")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"train.checkpoint_every must be >= 1 (or null), got {self.checkpoint_every}")
        if self.fill_budget and self.max_minutes is None:
            raise ConfigError("train.fill_budget needs train.max_minutes (--max-minutes)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not isinstance(self.group_by, str) or not self.group_by:
            raise ConfigError(f"train.group_by must be a column name, 'auto' or 'none', got {self.group_by!r}")
        if self.on_bad_row not in ("error", "skip"):
            raise ConfigError(f"train.on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio must be in [0, 1)")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("train.patience must be >= 1 (or null to never stop early)")
        if self.ema_epochs < 0:
            raise ConfigError(f"train.ema_epochs must be >= 0 (0: off), got {self.ema_epochs}")


@dataclass
class DataConfig:
    """How rows are decoded (data/dataset.py, data/loader.py) and where decoded inputs are kept (data/cache.py)."""
    # DataLoader worker processes that decode and collate batches. None: min(4, CPUs - 1), and 0 for
    # tables under data.loader.PARALLEL_ROWS rows, where starting processes costs more than it saves.
    workers: int | None = None
    prefetch: int = 2                # batches each worker keeps ready (bounded: workers x prefetch in flight)
    # Decoded inputs (uint8 pixels, fp16 log-mel, int32 token ids) are stored once in an on-disk cache
    # keyed by file content and processor settings, and read back by every later epoch and run
    # (train, evaluate, embed, pretrain). False: rows are decoded again every time they are read.
    cache: bool = True
    cache_dir: str = "~/.cache/polyfuse/decoded"

    def validate(self):
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0 (or null for the default), got {self.workers}")
        _positive(self, "prefetch")
        if not isinstance(self.cache_dir, str) or not self.cache_dir.strip():
            raise ConfigError("data.cache_dir must be a folder")


@dataclass
class AugmentConfig:
    """Training-time augmentations (data/augment.py), drawn from the global RNG seeded by train.seed."""
    enabled: bool = False
    image_crop_scale: float = 0.7    # random resized crop keeps between this and all of the area
    image_flip: bool = False         # off by default: flipping changes digits, letters and arrows
    color_jitter: float = 0.3        # brightness/contrast/saturation factors in [1 - j, 1 + j]
    audio_crop: float = 0.2          # random crop in time: a stretch of at least 1 - this of each clip
    audio_shift: float = 0.1         # circular time shift, up to this fraction of a clip
    audio_gain_db: float = 6.0       # gain drawn in [-g, +g] dB
    audio_noise: float = 0.05        # std of Gaussian noise on the normalised log-mel
    freq_warp: float = 0.1           # mel axis stretched by a factor in [1 - w, 1 + w] (pitch / speaker)
    audio_speed: float = 0.1         # tempo: each clip's frames played at a rate in [1 - s, 1 + s] (speaking rate)
    audio_filter_db: float = 6.0     # a random smooth equaliser over the mel bands, within +-this dB (microphone)
    time_masks: int = 2              # SpecAugment: masks of up to time_mask_width frames
    time_mask_width: int = 8
    freq_masks: int = 2              # SpecAugment: masks of up to freq_mask_width mel bins
    freq_mask_width: int = 8
    token_dropout: float = 0.1       # chance of deleting each text token
    span_mask: float = 0.15          # one span of about this fraction of a text becomes [MASK]

    def validate(self):
        for name in ("image_crop_scale", "color_jitter", "audio_crop", "audio_shift", "audio_noise", "token_dropout",
                     "span_mask", "freq_warp", "audio_speed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width", "audio_gain_db",
                     "audio_filter_db"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")


def prompt_parts(template: str) -> list[tuple[str, str | None]]:
    """generate.prompt as (literal text, column or None) pieces. ConfigError when malformed."""
    try:
        return [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]
    except ValueError as e:
        raise ConfigError(f"generate.prompt {template!r}: {e} (write a literal brace as {{{{ or }}}})") from None


def prompt_columns(template: str) -> list[str]:
    """The columns generate.prompt names, in order. ConfigError for `{}` or a malformed template."""
    fields = [f for _, f in prompt_parts(template) if f is not None]
    if any(not f for f in fields):
        raise ConfigError(f"generate.prompt {template!r}: each {{...}} must name a column")
    return list(dict.fromkeys(fields))


@dataclass
class GenerateConfig:
    """Generation runs (schema.task generation, generation/): the decoder and how it decodes."""
    decoder: str | None = None       # a Hugging Face causal LM folder (or a hub id already cached), or
    #                                  "scratch": a small decoder and tokenizer trained from the targets
    # frozen: only the projector trains (LLaVA's first stage); lora: LoRA adapters on the decoder too
    # (its second stage); full: every decoder weight trains.
    decoder_train: str = "frozen"
    # With decoder_train full and a pretrained decoder: its weights learn at this share of
    # train.lr, the new weights (projector, fusion, encoders) at the full rate. The rate that
    # trains a fresh projector in few epochs (1e-3 at batch 16) overwrites what the decoder knows:
    # Whisper tiny.en on spoken digits of an unheard speaker, WER 0.035 at 1e-3 vs 0.019 at 1e-4.
    decoder_lr_scale: float = 0.1
    # With decoder_train lora or full: the share of the planned epochs that trains the projector
    # alone first (LLaVA's two stages in one run): a fresh projector's prefix is noise, and
    # adapting the decoder to noise unlearns language before the prefix means anything.
    first_stage: float = 0.3
    # None: the decoder reads every fused token; K: K learned queries read the fused tokens (one
    # cross-attention, as Flamingo's resampler and BLIP-2's queries) and the decoder reads K
    # positions, whatever the input's length: a pretrained decoder's cost grows with its sequence.
    prefix_tokens: int | None = None
    max_target_tokens: int = 48      # target texts are cut to this many tokens (end-of-text included)
    max_new_tokens: int = 48
    num_beams: int = 1               # 1: greedy (or sampling with do_sample)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # A prompt the decoder reads after the prefix and before the target, e.g. "Question: {question}
    # Answer:"; {column} is that column's text in each row (a question, an instruction).
    prompt: str | None = None
    max_prompt_tokens: int = 64
    # Weight of a CTC loss on the audio column's fused tokens beside the next-token loss (hybrid
    # CTC/attention ASR, Watanabe et al. 2017). CTC reads the target left to right through the
    # clip, one token per stretch of audio: an encoder trained from nothing must then say which
    # word each stretch holds, where the next-token loss alone lets it learn the training voices
    # and the decoder guess. For transcripts only (a description of a sound does not follow it in
    # order); 0: off. The validation loss stays the next-token loss alone.
    ctc: float = 0.0
    # With generate.ctc and num_beams > 1: every beam is scored again by (1 - w) x the decoder's
    # log-likelihood + w x the CTC head's, and the best one is written (joint CTC/attention
    # decoding, as n-best rescoring); 0: the beam search's own choice.
    ctc_rescore: float = 0.0

    @property
    def pretrained_decoder(self) -> bool:
        """A language model folder (or hub id), not `scratch`."""
        return self.decoder not in (None, "scratch")

    def validate(self):
        _positive(self, "max_target_tokens", "max_new_tokens", "num_beams", "temperature", "max_prompt_tokens",
                  "decoder_lr_scale")
        if self.ctc < 0:
            raise ConfigError(f"generate.ctc must be >= 0 (0: off), got {self.ctc}")
        if not 0.0 <= self.ctc_rescore <= 1.0:
            raise ConfigError(f"generate.ctc_rescore must be in [0, 1] (0: off), got {self.ctc_rescore}")
        if self.prefix_tokens is not None and self.prefix_tokens < 1:
            raise ConfigError(f"generate.prefix_tokens must be >= 1 or null, got {self.prefix_tokens}")
        if self.prompt is not None:
            prompt_columns(self.prompt)          # raises ConfigError on a malformed template
        if self.decoder_train not in ("frozen", "lora", "full"):
            raise ConfigError(f"generate.decoder_train must be frozen, lora or full, got {self.decoder_train!r}")
        if not 0.0 <= self.first_stage < 1.0:
            raise ConfigError(f"generate.first_stage must be in [0, 1), got {self.first_stage}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generate.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (`polyfuse pretrain`). Which objectives a table's columns and the
    model allow is checked by objectives.check_objectives, against what each objective declares."""
    objectives: list[str] | None = None          # None: every objective the columns and model allow
    weights: dict = field(default_factory=dict)   # objective -> weight; unnamed ones weigh 1
    mlm_prob: float = 0.15                        # share of text tokens hidden (BERT)
    mask_ratio: float = 0.5                       # share of image patches / audio tokens hidden
    proj_dim: int = 128                           # contrastive projection width
    temperature: float = 0.07                     # contrastive temperature at the start (learned)
    hard_negatives: bool = True                   # ITM negatives from contrastive similarity
    lock_towers: bool = False                     # contrastive: frozen towers embed their columns alone (LiT)
    lock_columns: list[str] | None = None         # with lock_towers: only these columns (None: every frozen one)
    # contrastive: columns embedded by one Linear on their pretrained tower's mean-pooled output (a
    # linear probe) instead of through the fusion: fewer weights to fit a few thousand pairs.
    pooled_columns: list[str] = field(default_factory=list)
    # A column whose equal values mark rows that match each other (many-to-many pairings: any image
    # of a 7 matches any spoken 7): such rows are never each other's contrastive or ITM negatives.
    match_column: str | None = None

    def validate(self):
        names = list(self.objectives or []) + list(self.weights)
        unknown = [o for o in names if o not in OBJECTIVES]
        if unknown or self.objectives == []:
            raise ConfigError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
        if self.objectives is not None:
            not_run = [w for w in self.weights if w not in self.objectives]
            if not_run:
                raise ConfigError(f"weights given for objective(s) not run: {not_run}")
        for name in ("mlm_prob", "mask_ratio"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"pretrain.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.temperature <= 0 or self.proj_dim <= 0:
            raise ConfigError("pretrain.temperature and pretrain.proj_dim must be > 0")
        for name, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"pretrain.weights.{name} must be a number >= 0, got {w!r}")


@dataclass
class Config:
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        m = self.model
        if (m.freeze_encoders or m.lora) and all(getattr(self, x).encoder in ("scratch", "word2vec")
                                                  for x in MODALITIES):
            raise ConfigError("model.freeze_encoders / model.lora need a pretrained tower "
                              "(text.encoder, image.encoder or audio.encoder set to a model folder or hub id)")
        if self.schema.task == "generation" and not self.generate.decoder:
            raise ConfigError("a generation run needs a decoder: --decoder FOLDER (generate.decoder), a Hugging "
                              "Face causal language model")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build and validate; unknown keys are errors (with a suggestion), not silently ignored."""
        d = dict(d or {})
        model = dict(d.get("model") or {})
        if model.get("size"):
            # A named size supplies defaults; keys the user wrote next to it win.
            model = {**load_size(model["size"]), **model}
            d["model"] = model
        return _build(cls, d, "").validate()

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_config_file(path))

    def merged(self, overrides: dict) -> "Config":
        """A copy with nested overrides applied ({"model": {"d_model": 128}}); None values are skipped."""
        base = self.to_dict()
        for section, values in overrides.items():
            if section not in base:
                raise ConfigError(f"unknown config section '{section}'")
            values = {k: v for k, v in values.items() if v is not None}
            if section == "model" and values.get("size"):
                # A newly named size replaces the width/depth it defines, unless overridden too.
                for key in load_size(values["size"]):
                    base["model"].pop(key, None)
            base[section].update(values)
        return Config.from_dict(base)


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON config file as written (only the keys it sets)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return data or {}


def set_keys(*overrides: dict) -> set[str]:
    """"section.key" for every value given (not None) in nested override dicts: what a user set,
    which the plan (planning/) leaves alone."""
    return {f"{section}.{key}" for d in overrides for section, values in (d or {}).items()
            if isinstance(values, dict) for key, v in values.items() if v is not None}


def available_sizes() -> list[str]:
    folder = resources.files("polyfuse") / "configs" / "sizes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_size(name: str) -> dict:
    if name not in available_sizes():
        raise ConfigError(f"unknown model size {name!r}; available: {', '.join(available_sizes())}")
    text = (resources.files("polyfuse") / "configs" / "sizes" / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def _check_encoder(section: str, value: str, keywords: tuple[str, ...]):
    """A keyword, or else a model folder / hub id (checked when the tower is built, not here: a
    saved run reloads its tower from its own folder, so the original path need not exist any more)."""
    if not value.strip():
        raise ConfigError(f"{section}.encoder must be one of {keywords} or a model folder / hub id, got {value!r}")
    if value == "word2vec" and "word2vec" not in keywords:
        raise ConfigError(f"{section}.encoder 'word2vec' is for text only")
    if is_network(value) and section != "image":
        raise ConfigError(f"{section}.encoder {value!r}: a network factory (module:factory) is for images; "
                          f"use a Hugging Face model folder for {section}")


def is_tower(encoder: str) -> bool:
    """True when an encoder setting names a pretrained model (a Hugging Face folder or hub id, or a
    network factory) rather than a keyword."""
    return encoder not in ("scratch", "word2vec")


_NETWORK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_network(encoder: str) -> bool:
    """True for `module:factory`, an importable factory of a PyTorch network (data/network.py)."""
    return bool(_NETWORK.match(encoder))


def _positive(obj, *names):
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value, tp, name):
    """Accept what YAML/JSON/CLI give (int for float, a string for a one-column list)."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"config key '{name}' cannot be null")
    base = next((a for a in args if a is not type(None)), tp) if args and type(None) in args else tp
    origin = typing.get_origin(base)
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"config key '{name}' must be a list")
        (item_tp,) = typing.get_args(base)
        return [_coerce(v, item_tp, name) for v in items]
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (base is int and value != int(value)):
            raise ConfigError(f"config key '{name}' must be {base.__name__}, got {value!r}")
        return base(value)
    if base is str and not isinstance(value, str):
        raise ConfigError(f"config key '{name}' must be a string, got {value!r}")
    return value
