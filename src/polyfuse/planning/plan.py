"""The plan: settings chosen from a table's profile (profile.py), each with the reason it was chosen.

Precedence, lowest first: the config defaults, the plan, the user's config file, the user's flags.
`apply_plan` only sets keys the user did not set (`fixed`). Every rule below is stated in terms
of the data (sizes, lengths, rates, row counts) and the budget, never of one data set: they are
the choices a practitioner makes on first sight of a table, written down so they are repeatable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import Config, is_network, is_tower, load_size

# Presets pick the budget, the model's size and augmentation together (as AutoGluon's do).
# No preset: the `medium` choices without a time budget (the epochs come from the row count).
PRESETS = {
    "fast": {"minutes": 3, "grow": 0, "augment": False},
    "medium": {"minutes": 10, "grow": 0, "augment": True},
    "best": {"minutes": 30, "grow": 1, "augment": True},
}
STEPS_WITHOUT_BUDGET = 2000        # optimizer steps to aim for when no time budget is given
FINETUNE_LR = 1e-4                 # train.lr when a pretrained encoder-decoder is fine-tuned whole
PREFIX_TOKENS = 10                 # generate.prefix_tokens for a pretrained decoder (ClipCap's prefix length)


@dataclass
class Plan:
    settings: dict = field(default_factory=dict)     # {section: {key: value}}
    reasons: dict = field(default_factory=dict)      # {"section.key": why}
    notes: list = field(default_factory=list)        # what the plan decided that is not a config key

    def set(self, key: str, value, why: str):
        section, name = key.split(".")
        self.settings.setdefault(section, {})[name] = value
        self.reasons[key] = why

    def to_dict(self) -> dict:
        return {"settings": self.settings, "reasons": self.reasons, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(dict(d["settings"]), dict(d["reasons"]), list(d.get("notes", [])))


def make_plan(profile: dict, cfg: Config, train_rows: int, preset: str | None = None,
              max_minutes: float | None = None, supervised: bool = True) -> Plan:
    """Settings for `cfg.schema`'s columns from `profile`; train_rows: rows left for training.
    supervised=False (pretraining): no task head, so no label smoothing and no auxiliary heads."""
    plan = Plan()
    generation = cfg.schema.task == "generation"
    cols = profile["columns"]
    by_mod = {m: [c for c in cols.values() if c["modality"] == m and c.get("readable")]
              for m in ("text", "image", "audio")}
    if by_mod["image"] and not is_tower(cfg.image.encoder):
        _image(plan, by_mod["image"])
    if by_mod["audio"]:
        seconds = _clip_length(plan, by_mod["audio"], whole=generation)
        if not is_tower(cfg.audio.encoder):
            _audio(plan, by_mod["audio"], seconds)
        if generation:
            # A transcript follows the whole clip in order: a crop would drop words, a circular
            # shift reorder them; the target would no longer say what the clip says.
            why = "the target text follows the whole clip in order"
            plan.set("augment.audio_crop", 0.0, why + ": no random crops")
            plan.set("augment.audio_shift", 0.0, why + ": no circular shifts")
            only_audio = len(by_mod["audio"]) == 1 and not by_mod["text"] and not by_mod["image"]
            if only_audio and not is_tower(cfg.audio.encoder):
                # A clip alone in, text out: a transcript. CTC beside the next-token loss (hybrid
                # CTC/attention; its usual weight 0.3) makes an encoder trained from nothing say
                # which word each stretch of the clip holds; without it the encoder learnt the
                # training voices (spoken digit sequences, an unheard speaker: WER 0.76 -> 0.50).
                # A pretrained tower already knows where words are.
                plan.set("generate.ctc", 0.3, "a clip in, its transcript out, scratch audio encoder: "
                                               "CTC teaches the encoder where each word is")
                # Decoding then asks the CTC head too: four beams, rescored by (0.7 x the decoder's
                # + 0.3 x CTC's) log-likelihood (joint decoding; 0.3, ESPnet's usual weight): the
                # decoder alone may write a digit the clip does not hold (three unheard speakers:
                # WER 0.218 -> 0.210, 0.298 -> 0.275, 0.106 -> 0.096; about 2.5x greedy's time).
                plan.set("generate.num_beams", 4, "a transcript: four beams, the CTC head helps choose")
                plan.set("generate.ctc_rescore", 0.3, "each beam scored by 0.7 x the decoder's + 0.3 x the CTC "
                                                      "head's log-likelihood (joint CTC/attention decoding)")
                # Speech recognisers normalise each utterance's cepstral mean: the words must carry
                # over to voices and microphones the training set lacks (with CTC, digit sequences
                # of three unheard speakers: WER 0.505 -> 0.326, 0.382 -> 0.330, 0.204 -> 0.155).
                plan.set("audio.level", "band", "a transcript carries over to other voices and microphones: "
                                                "each mel band's mean over the clip removed")
    if by_mod["text"]:
        _text(plan, by_mod["text"], tower=is_tower(cfg.text.encoder))
        if generation:
            # A generated text answers the input text as written: "how many red shapes" with "red"
            # dropped asks another question, whose answer is not the target. Word dropout and span
            # masks regularise a label; here they taught the likeliest guess (synthetic VQA: exact
            # match 0.812 with them, 0.919 without; colour questions 0.69 -> 0.99).
            why = "the target answers the text as written: no words dropped or masked"
            plan.set("augment.token_dropout", 0.0, why)
            plan.set("augment.span_mask", 0.0, why)
    _model(plan, profile, cfg, train_rows, preset, supervised)
    towers = [m for m in ("text", "image", "audio") if by_mod[m] and is_tower(getattr(cfg, m).encoder)]
    if towers:
        _towers(plan, towers, preset)
        if not supervised:
            _pretrain_towers(plan, cfg, towers, preset)
    _train(plan, profile, cfg, train_rows, preset, max_minutes)
    if generation:
        # The epoch kept is the one with the most validation tokens right, and on an unheard voice
        # or style that share jumps by several points from one epoch to the next while the
        # learning rate is high: a spike picks the epoch, and the dips end the run early. The
        # average of the last two epochs' weights moves smoothly (spoken digit sequences, george
        # unheard: WER 0.314 -> 0.218, 59 -> 66 epochs before the plateau stopped it).
        plan.set("train.ema_epochs", 2.0, "validate and keep the weights averaged over about 2 epochs: "
                                          "steadier on voices and styles the training set lacks")
    if generation and cfg.generate.pretrained_decoder:
        _pretrained_decoder(plan, cfg, {m: getattr(cfg, m).encoder for m in towers
                                        if not is_network(getattr(cfg, m).encoder)})
    if cfg.train.group_by == "none":
        for col, k in profile["group_candidates"].items():
            plan.notes.append(f"column '{col}' ({k} values) looks like a group: with --group-by {col} "
                              "(or auto) validation holds out whole groups and scores what a new one will get")
    return plan


def _image(plan: Plan, columns: list[dict]):
    side = min(c["short_side"]["median"] for c in columns)
    size = int(min(64, max(16, side)))
    # About 8 x 8 patches: enough tokens to place strokes and parts, few enough for a CPU step.
    patch = 2 ** max(1, round(math.log2(size / 8)))
    size = max(patch, round(size / patch) * patch)
    why = f"median short side {side:g} px" + (", capped at 64 for a CPU model" if side > 64 else "")
    plan.set("image.size", size, why)
    plan.set("image.patch", patch, f"{size // patch}x{size // patch} patches")
    # A plain CNN (3x3 convolutions, BatchNorm, 2x2 max-pooling) under the patch grid: from scratch
    # on a few thousand images it learns what a small image CNN does, which patch projections or
    # strided convolutions alone do not (they trail it by several points on held-out groups).
    why = "a plain BatchNorm CNN under the patches learns from few images from scratch"
    plan.set("image.stem", "cnn", why)
    plan.set("image.stem_norm", "batch", why)
    plan.set("image.stem_blocks", 0, "convolutions, no residual blocks: a small CNN")
    plan.set("image.stem_downsample", "max", "2x2 max-pooling: a feature survives a one-pixel shift")
    plan.set("image.stem_width", 32, f"32 channels at full size, {32 * patch} at the {size // patch}x{size // patch} grid")
    aspect = max(c["aspect"]["p90"] for c in columns)
    if aspect > 1.5:
        plan.set("image.resize", "pad", f"aspect ratios up to {aspect:.2f}: padding keeps every part of the image")
    elif aspect > 1.05:
        plan.set("image.resize", "crop", f"aspect ratios up to {aspect:.2f}: resize the short side, keep the centre")
    else:
        plan.set("image.resize", "squash", "square images")
    n = len(columns)
    mean = [round(sum(c["mean"][i] for c in columns) / n, 3) for i in range(3)]
    std = [round(max(0.02, sum(c["std"][i] for c in columns) / n), 3) for i in range(3)]
    plan.set("image.mean", mean, "pixel mean of a sample of the training images")
    plan.set("image.std", std, "pixel spread of the same sample")


def _clip_length(plan: Plan, columns: list[dict], whole: bool) -> float:
    """audio.max_seconds. A label is usually decided within the first 95% of clip lengths, and the
    longest few would set every batch's padding. A transcript (whole=True) covers the whole clip:
    a cut clip's target names words it no longer has (spoken digit sequences: 79 of 2,000
    training clips ran past the 95th percentile), so the longest clip the profile read (it reads
    up to 256 a column) sets it, up to 30 s (Whisper's window)."""
    p95 = max(c["seconds"]["p95"] for c in columns)
    longest = max(c["seconds"]["max"] for c in columns)
    if whole:
        seconds = round(min(30.0, max(0.5, longest)), 2)
        plan.set("audio.max_seconds", seconds, f"the longest clip read is {longest:.2f} s: a transcript covers "
                 "the whole clip" + ("; capped at 30 s, longer ones keep their start" if longest > 30 else ""))
        return seconds
    seconds = round(min(10.0, max(0.5, p95)), 2)
    plan.set("audio.max_seconds", seconds, f"95% of clips are at most {p95:.2f} s (longest {longest:.2f} s)"
             + ("; capped at 10 s" if p95 > 10 else "") + "; longer ones keep their start")
    return seconds


def _towers(plan: Plan, towers: list[str], preset: str | None):
    """How pretrained towers adapt. Frozen, each input goes through the tower once (the feature
    cache) and only the projections, fusion and head train: the most epochs a budget buys, and
    the pretrained features intact on small data. `best` also trains each tower's top layer."""
    which = ", ".join(towers)
    plan.set("model.freeze_encoders", True, f"pretrained {which}: frozen, features cached after one pass")
    if preset == "best":
        plan.set("model.unfreeze_top_k", 1, "preset best: the top layer of each tower adapts")


def _pretrain_towers(plan: Plan, cfg: Config, towers: list[str], preset: str | None):
    """Contrastive pretraining on frozen towers. A frozen text tower already places sentences the table
    never had: the other columns learn to land in its space (LiT) rather than both sides drifting
    into one fitted to these rows. A cached tower's inputs cannot be augmented (an edited image
    misses the cache), so half of its output tokens are left out of each training row instead
    (FLIP's patch dropout). Measured on emoji: docs/benchmarks.md."""
    adapted = preset == "best" or cfg.model.unfreeze_top_k or cfg.model.lora
    if adapted or "contrastive" not in (cfg.pretrain.objectives or []):
        return          # adapted towers (`best`, --unfreeze-top, --lora) are neither locked nor cached
    text_cols = list(cfg.schema.text)
    others = [c for c, m in cfg.schema.streams() if m != "text"]
    if "text" in towers and text_cols and others and not cfg.pretrain.lock_towers:
        plan.set("pretrain.lock_towers", True, "a frozen text tower: the other columns learn its sentence space (LiT)")
        plan.set("pretrain.lock_columns", text_cols, "the text columns, on the frozen tower")
    if any(m in towers for m in ("image", "audio")) and cfg.model.feature_cache:
        plan.set("model.tower_token_drop", 0.5, "cached frozen tower: half its tokens left out per training row")


def _audio(plan: Plan, columns: list[dict], seconds: float):
    # Resampling up adds no bandwidth: when a tenth or more of the files are recorded at a lower
    # rate, their empty upper bands would tell those files apart from the rest (a recording set,
    # not the content) and carry nothing for them, so every clip is brought to that rate.
    common = min(c["sample_rate"]["most_common"] for c in columns)
    rate = min(min(c["sample_rate"]["p10"], c["sample_rate"]["most_common"]) for c in columns)
    sr = min(16000, rate)
    why = f"files are mostly {common} Hz" if rate == common else \
        f"a tenth or more of the files are at {rate} Hz (most at {common} Hz): higher bands would be empty for them"
    plan.set("audio.sample_rate", sr, why + (", capped at 16 kHz" if rate > sr else ""))
    n_fft = 2 ** math.ceil(math.log2(0.025 * sr))          # >= 25 ms windows
    hop = max(1, round(0.010 * sr))                         # 10 ms hop
    plan.set("audio.n_fft", n_fft, f"{1000 * n_fft / sr:.0f} ms windows")
    plan.set("audio.hop_length", hop, "10 ms hop")
    # Mel bands no narrower than about one FFT bin at the low end.
    n_mels = 40 if sr <= 8000 else 64
    plan.set("audio.n_mels", min(n_mels, n_fft // 4), f"{n_fft // 2 + 1} FFT bins")
    frames = seconds * sr / hop
    k = 2 ** max(2, math.ceil(math.log2(frames / 64)))      # at most ~64 audio tokens
    plan.set("audio.frames_per_token", k, f"{math.ceil(frames / k)} tokens for a {seconds:g} s clip")
    plan.set("audio.stem", "conv", "strided convolutions over frames")
    plan.set("audio.level", "clip", "each clip's mean level removed: recording gain is not a feature")
    median = min(c["seconds"]["median"] for c in columns)
    plan.set("augment.time_mask_width", max(1, round(0.1 * median * sr / hop)),
             f"SpecAugment time masks of up to 10% of a median clip ({median:.2f} s)")
    plan.set("augment.freq_mask_width", max(1, min(n_mels, n_fft // 4) // 8), "up to 1/8 of the mel bands")


def _text(plan: Plan, columns: list[dict], tower: bool):
    p95 = max(c["words"]["p95"] for c in columns)
    # Sub-word tokenizers split about 1.3 tokens per English word; [CLS]/[SEP] add two.
    length = int(min(512, max(16, 8 * math.ceil((1.3 * p95 + 2) / 8))))
    plan.set("text.max_length", length, f"95% of texts have at most {p95:.0f} words")
    if not tower:
        vocab = max(c["vocabulary_in_sample"] for c in columns)
        size = int(min(16000, max(1000, 1000 * round(1.5 * vocab / 1000))))
        plan.set("text.vocab_size", size, f"{vocab} distinct words in the texts read")


def _model(plan: Plan, profile: dict, cfg: Config, rows: int, preset: str | None, supervised: bool):
    grow = PRESETS[preset or "medium"]["grow"] + (1 if rows >= 20000 else 0)
    size = ["tiny", "small", "base"][min(2, grow)]
    for key, value in load_size(size).items():
        plan.set(f"model.{key}", value, f"size '{size}': {rows} training rows"
                 + (f", preset {preset}" if preset else ""))
    modalities = {c["modality"] for c in profile["columns"].values()}
    # Not for generation: its target is written from the inputs together (a question is answered
    # from its image), so a row with one of them dropped has no right text, only the likeliest
    # guess; and generation has no per-modality heads to train or ensemble.
    if len(modalities) >= 2 and supervised and cfg.schema.task != "generation":
        plan.set("model.modality_dropout", 0.3, f"{len(modalities)} modalities: each must predict alone too")
        plan.set("model.aux_weight", 0.5, "every row also predicted from each modality alone")
        plan.set("model.ogm_alpha", 0.5, "slow the modality that is ahead (OGM)")
        plan.set("model.ensemble", True, "predict from the fused path and each modality alone together")


def _train(plan: Plan, profile: dict, cfg: Config, rows: int, preset: str | None, max_minutes: float | None):
    batch = 32 if rows < 1000 else 64 if rows < 50000 else 128
    _batch(plan, batch, f"{rows} training rows")
    plan.set("train.weight_decay", 0.05, "small data: regularise")
    if profile["label"].get("task") == "classification":
        plan.set("train.label_smoothing", 0.1, "classification")
    minutes = max_minutes if max_minutes is not None else PRESETS[preset]["minutes"] if preset else None
    if minutes is not None:
        plan.set("train.max_minutes", minutes, "--max-minutes" if max_minutes is not None else f"preset {preset}")
        plan.set("train.fill_budget", True, "epochs chosen from the first steps' speed to fill the budget")
        plan.set("train.warmup_ratio", 0.05, "a long schedule needs a short warm-up")
        plan.set("train.patience", 10, "stop early after 10 epochs (or a quarter of those planned, if more) "
                                       "without validation improvement")
    else:
        steps = math.ceil(rows / batch)
        epochs = int(min(40, max(10, math.ceil(STEPS_WITHOUT_BUDGET / steps))))
        plan.set("train.epochs", epochs, f"about {STEPS_WITHOUT_BUDGET} steps at {steps} steps per epoch "
                 "(no time budget)")
        patience = max(5, epochs // 4)
        plan.set("train.patience", patience, f"stop early after {patience} epochs without validation improvement")
    augment = PRESETS[preset or "medium"]["augment"]
    plan.set("augment.enabled", augment, f"preset {preset or 'medium'}")


def _batch(plan: Plan, batch: int, why: str):
    """The batch size and the learning rate that goes with it (2e-3 at 64, square-root scaling)."""
    plan.set("train.batch_size", batch, why)
    plan.set("train.lr", round(2e-3 * math.sqrt(batch / 64), 5), f"AdamW, scaled with the square root of batch {batch}")


def _pretrained_decoder(plan: Plan, cfg: Config, hf_towers: dict[str, str]):
    """A pretrained language model as the decoder: every step runs it forward and back (the prefix's
    gradient passes through all its layers), so its sequence length and the number of steps are
    what a budget buys. Measured on emoji captions with SmolLM2-135M: 49 image tokens + [CLS] as the
    prefix, batch 64, ran 6 rows/s, one epoch (28 steps) in 10 minutes (docs/benchmarks.md)."""
    if cfg.model.fusion == "attention":
        plan.set("generate.prefix_tokens", PREFIX_TOKENS, f"{PREFIX_TOKENS} learned queries read the fused "
                 "tokens: the decoder's sequence no longer grows with the input (ClipCap: 10)")
    _batch(plan, 16, "a pretrained decoder: more, smaller steps for the same rows")
    own = _own_towers(cfg.generate.decoder, hf_towers)
    if own:
        # The run is then the fine-tuning of a pretrained encoder-decoder (its encoder as the tower,
        # frozen and cached) with a zero-started side path for the fused tokens: it must learn the
        # targets' format (Whisper writes "7, 4, 3." where the table says "7 4 3"), so the decoder
        # trains, at a fine-tuning rate for all: at 1e-3 with the decoder at 1e-4, a new speaker's
        # spoken digits came out at WER 0.023, at 1e-4 throughout 0.019 (docs/benchmarks.md).
        why = f"the decoder reads its own encoder's states ({', '.join(own)} tower): a pretrained model is fine-tuned"
        plan.set("generate.decoder_train", "full", why + ", decoder included (its output format is the targets')")
        plan.set("train.lr", FINETUNE_LR, why + ": a fine-tuning rate")
        plan.set("generate.decoder_lr_scale", 1.0, why + ": one rate for all")


def _own_towers(decoder: str, towers: dict[str, str]) -> list[str]:
    """Modalities whose Hugging Face tower an encoder-decoder decoder's cross-attention reads as its
    own encoder's states (generation/model.py own_family). A folder that cannot be read counts as
    no match here; building the model reports it with its own error."""
    import transformers

    from ..generation.model import own_family
    try:
        dec = transformers.AutoConfig.from_pretrained(decoder)
        if not dec.is_encoder_decoder:
            return []
        found = []
        for m, path in towers.items():
            tower = transformers.AutoConfig.from_pretrained(path)
            # Another family's config may name its width otherwise (or not at all): compare it only within the family.
            if tower.model_type == dec.model_type and own_family(dec, tower.model_type, tower.hidden_size):
                found.append(m)
        return found
    except (OSError, ValueError, KeyError):
        return []


def apply_plan(cfg: Config, plan: Plan, fixed: set[str]) -> tuple[Config, dict]:
    """cfg with the plan's values for every key not in `fixed` (what the user set); also
    {key: "plan" | "yours"} for the plan's keys, for the printed table."""
    if "model.size" in fixed:
        fixed = fixed | {f"model.{k}" for k in load_size(cfg.model.size or "tiny")}
    chosen, source = {}, {}
    for section, values in plan.settings.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in fixed:
                source[name] = "yours"
            else:
                chosen.setdefault(section, {})[key] = value
                source[name] = "plan"
    return cfg.merged(chosen), source


def format_plan(plan: Plan, cfg: Config, source: dict) -> str:
    """A short table: setting, value in force, and where it came from (the data's reason, or yours)."""
    rows = []
    for name, why in plan.reasons.items():
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        rows.append((name, _short(value), why if source.get(name) == "plan" else "set by you"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'setting'.ljust(w0)}  {'value'.ljust(w1)}  why", f"{'-' * w0}  {'-' * w1}  ---"]
    lines += [f"{a.ljust(w0)}  {b.ljust(w1)}  {c}" for a, b, c in rows]
    lines += [f"- {n}" for n in plan.notes]
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
