"""The target text of a generation run: the decoder's own tokenizer, saved with the run.

It plays the part LabelCodec plays for the other tasks: text -> ids for training (with the
end-of-text token appended, so the model learns where to stop) and ids -> text for predictions.
`processors/decoder/` keeps the tokenizer and the decoder's model config, so a saved run rebuilds
the decoder's architecture from its own folder; the weights are in model.safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, InputError
from ..data.manifest import is_missing

FOLDER = "decoder"


class TextTargets:
    task = "generation"

    def __init__(self, tokenizer, model_config, max_length: int):
        self.tokenizer, self.model_config, self.max_length = tokenizer, model_config, max_length
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the decoder's tokenizer has no end-of-text token (eos_token)")
        self.eos_id = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    @classmethod
    def from_decoder(cls, path: str, max_length: int) -> "TextTargets":
        import transformers
        try:
            tok = transformers.AutoTokenizer.from_pretrained(path)
            config = transformers.AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model.decoder {path!r}: cannot load a language model's tokenizer and "
                              f"config (a Hugging Face model folder; nothing is downloaded at run time): "
                              f"{str(e).splitlines()[0]}") from None
        return cls(tok, config, max_length)

    @classmethod
    def scratch(cls, texts: list[str], cfg) -> "TextTargets":
        """`--decoder scratch`: a WordPiece tokenizer learned from the training targets and a small
        Llama-style decoder config (width, depth and heads of the run's model), trained from nothing.
        Saved like any decoder, so the run reloads the same way."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        from transformers import LlamaConfig, PreTrainedTokenizerFast
        specials = ["<pad>", "<eos>", "<unk>"]
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator([t for t in texts if t], trainers.WordPieceTrainer(
            vocab_size=cfg.text.vocab_size, special_tokens=specials, show_progress=False))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
        m = cfg.model
        config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=m.d_model,
                             intermediate_size=int(m.d_model * m.mlp_ratio), num_hidden_layers=m.n_layers,
                             num_attention_heads=m.n_heads, num_key_value_heads=m.n_heads,
                             max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                             tie_word_embeddings=True)
        return cls(fast, config, cfg.generate.max_target_tokens)

    @property
    def start_ids(self) -> list[int]:
        """The tokens an encoder-decoder decoder reads before the target (none for a causal LM):
        Whisper's task prefix (start of transcript, no timestamps: what it was trained to see),
        otherwise the model's decoder_start_token_id."""
        if not self.model_config.is_encoder_decoder:
            return []
        from transformers import WhisperTokenizer, WhisperTokenizerFast
        if isinstance(self.tokenizer, (WhisperTokenizer, WhisperTokenizerFast)):
            return list(self.tokenizer.prefix_tokens)
        start = self.model_config.decoder_start_token_id
        if start is None:
            raise ConfigError("the encoder-decoder decoder's config has no decoder_start_token_id")
        return [start]

    def save(self, processors_dir: Path):
        out = Path(processors_dir) / FOLDER
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(out))
        self.model_config.save_pretrained(str(out))

    @classmethod
    def load(cls, processors_dir: Path, max_length: int) -> "TextTargets":
        return cls.from_decoder(str(Path(processors_dir) / FOLDER), max_length)

    def encode(self, value) -> torch.Tensor:
        """(L,) ids of the text and end-of-text, at most max_length in all. InputError without a
        location (the caller adds file, row and column)."""
        if is_missing(value) or not str(value).strip():
            raise InputError("missing target text")
        ids = self.tokenizer(str(value).strip(), add_special_tokens=False)["input_ids"][: self.max_length - 1]
        return torch.tensor(ids + [self.eos_id], dtype=torch.long)

    def encode_prompt(self, text: str, max_length: int) -> torch.Tensor:
        """(Q,) ids of a filled prompt (no end-of-text; may be empty), its last max_length tokens
        (the end of a prompt, "Answer:", is what the target follows)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return torch.tensor(ids[-max_length:], dtype=torch.long)

    def collate(self, ys: list[torch.Tensor]) -> dict:
        """ids (B, L) right-padded, mask (B, L) True on real tokens."""
        return pad_right(ys, self.pad_id)

    def decode(self, ids) -> str:
        """Generated ids -> text, up to (not including) the first end-of-text."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def pad_right(ys: list[torch.Tensor], pad_id: int) -> dict:
    """Token id rows -> {"ids": (B, L) right-padded with pad_id, "mask": (B, L) True on real tokens}."""
    L = max(len(y) for y in ys)
    device = ys[0].device
    ids = torch.full((len(ys), L), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(ys), L, dtype=torch.bool, device=device)
    for i, y in enumerate(ys):
        ids[i, :len(y)], mask[i, :len(y)] = y, True
    return {"ids": ids, "mask": mask}
