"""Text processor: a WordPiece/BPE tokenizer trained on the training texts, saved with the model."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from ..config import TextConfig
from ..errors import InputError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = [PAD, UNK, CLS, SEP, MASK]   # PAD first, so its id is 0


class TextProcessor:
    kind = "text"
    fields = ("ids", "mask")            # what collate returns that the encoder reads (the serving graph's inputs)
    init_vectors = None                 # word2vec's starting token embeddings (Word2VecTextProcessor)

    def __init__(self, cfg: TextConfig, tokenizer: Tokenizer | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer

    # -- fitting and persistence -------------------------------------------------
    def fit(self, texts) -> "TextProcessor":
        if self.cfg.tokenizer_path:
            return self._load_given(Path(self.cfg.tokenizer_path))
        if self.cfg.tokenizer == "wordpiece":
            tok = Tokenizer(models.WordPiece(unk_token=UNK))
            trainer = trainers.WordPieceTrainer(vocab_size=self.cfg.vocab_size, special_tokens=SPECIALS)
        else:
            tok = Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(vocab_size=self.cfg.vocab_size, special_tokens=SPECIALS)
        norm = [normalizers.NFD(), normalizers.StripAccents()]
        if self.cfg.lowercase:
            norm.append(normalizers.Lowercase())
        tok.normalizer = normalizers.Sequence(norm)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator((t for t in texts if isinstance(t, str) and t.strip()), trainer=trainer)
        self.tokenizer = tok
        return self

    def _load_given(self, path: Path) -> "TextProcessor":
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise InputError("no tokenizer.json found", file=str(path))
        self.tokenizer = Tokenizer.from_file(str(file))
        return self

    def save(self, folder: Path):
        self.tokenizer.save(str(folder / "tokenizer.json"))

    @classmethod
    def load(cls, cfg: TextConfig, folder: Path) -> "TextProcessor":
        return cls(cfg, Tokenizer.from_file(str(folder / "tokenizer.json")))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self._id(PAD, 0)

    @property
    def mask_id(self) -> int:
        return self._id(MASK, self.vocab_size - 1)

    def _id(self, token, default):
        i = self.tokenizer.token_to_id(token)
        return default if i is None else i

    # -- one value, then a batch --------------------------------------------------
    def fingerprint(self) -> str:
        """Every setting `pack` depends on (the decode cache's key): the config and the tokenizer itself."""
        return f"{type(self).__name__} {json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)} " \
               f"{self.tokenizer.to_str()}"

    def pack(self, value) -> dict:
        """{"ids": (T,) int32} without special tokens, cut to text.max_length."""
        if not isinstance(value, str):
            value = str(value)
        if not value.strip():
            raise InputError("text is empty (only whitespace)")
        ids = self.tokenizer.encode(value, add_special_tokens=False).ids[: self.cfg.max_length]
        if not ids:
            raise InputError(f"text {value[:40]!r} gives no tokens")
        return {"ids": np.asarray(ids, dtype=np.int32)}

    def unpack(self, packed: dict) -> dict:
        return {"ids": torch.from_numpy(packed["ids"].astype(np.int64))}

    def __call__(self, value) -> dict:
        return self.unpack(self.pack(value))

    def collate(self, items: list[dict | None]) -> dict:
        """Pad to the longest row; `mask` is True on real tokens. An absent row has an all-False mask."""
        T = max((len(x["ids"]) for x in items if x is not None), default=1)
        ids = torch.full((len(items), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(items), T, dtype=torch.bool)
        for i, x in enumerate(items):
            if x is not None:
                n = len(x["ids"])
                ids[i, :n], mask[i, :n] = x["ids"], True
        return {"ids": ids, "mask": mask, "present": mask.any(1)}
