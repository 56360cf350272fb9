"""`text.encoder: word2vec`: gensim Word2Vec vectors initialise the scratch text encoder's token embeddings.

The tokenizer is still the WordPiece/BPE one trained on the training texts; only the *initial*
value of each token's embedding changes. Two sources:

* trained here (default): Word2Vec (skip-gram) on the training texts *as tokenizer pieces*, so
  every piece that occurs in the corpus, subword pieces ("##ing") included, gets its own vector
  learned from the contexts it occurs in. Nothing needs mapping.
* a saved KeyedVectors file (`text.word2vec_vectors`; gensim's `.kv` save, or word2vec
  `.bin`/`.txt` format): vectors are per *word*, so each vocabulary piece is mapped:
    1. a piece that is itself a word of the file (e.g. "dog") takes that word's vector;
    2. any other piece (subword pieces like "ing"/"##ing", and words the file lacks) takes the
       count-weighted mean of the vectors of the training-corpus words whose tokenization
       contains it ("ing" <- "singing", "walking", ...);
    3. a piece with neither, and the special tokens, keeps the usual random initialisation.
    A piece "##x" whose corpus words are all missing from the file falls back to the word "x".

Vectors of another width than d_model are reduced by PCA (wider) or zero-padded (narrower), then
scaled to the element std of the random initialisation (0.02) so that they start on the same
scale as the position embeddings they are added to. Vectors only initialise: they are trained
further like any embedding, and a saved run stores the trained ones in model.safetensors.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TextConfig
from ..errors import ConfigError
from .text import TextProcessor

INIT_STD = 0.02     # the std init_weights gives embeddings


@dataclass
class InitVectors:
    vectors: torch.Tensor        # (V, D)
    found: torch.Tensor          # (V,) bool: rows that have a vector; the rest keep their random init


def stable_hash(text: str) -> int:
    """gensim seeds each word's vector with hashfxn(word); Python's hash() is salted per process."""
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16)


class Word2VecTextProcessor(TextProcessor):
    def __init__(self, cfg: TextConfig, d_model: int, seed: int = 0, tokenizer=None):
        super().__init__(cfg, tokenizer)
        self.d_model, self.seed = d_model, seed
        self.init_vectors: InitVectors | None = None

    def fit(self, texts) -> "Word2VecTextProcessor":
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        super().fit(texts)
        if self.cfg.word2vec_vectors:
            matrix, found = self._from_keyed_vectors(Path(self.cfg.word2vec_vectors), texts)
        else:
            matrix, found = self._train(texts)
        self.init_vectors = to_init_vectors(matrix, found, self.d_model)
        return self

    def _train(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from gensim.models import Word2Vec
        sentences = [self.tokenizer.encode(t, add_special_tokens=False).tokens for t in texts]
        # workers=1 and a stable hash: the same texts and seed give the same vectors in every run.
        w2v = Word2Vec(sentences, vector_size=self.d_model, window=5, min_count=1, sg=1, epochs=10,
                       seed=self.seed, workers=1, hashfxn=stable_hash)
        vocab = self.tokenizer.get_vocab()
        matrix = np.zeros((self.vocab_size, self.d_model), dtype=np.float32)
        found = np.zeros(self.vocab_size, dtype=bool)
        for piece, i in vocab.items():
            if piece in w2v.wv.key_to_index:
                matrix[i], found[i] = w2v.wv[piece], True
        return matrix, found

    def _from_keyed_vectors(self, path: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        kv = load_keyed_vectors(path)
        vocab = self.tokenizer.get_vocab()
        matrix = np.zeros((self.vocab_size, kv.vector_size), dtype=np.float32)
        found = np.zeros(self.vocab_size, dtype=bool)
        # Rule 2's evidence: for each piece, the corpus words (with vectors) whose tokenization has it.
        sums, counts = defaultdict(lambda: np.zeros(kv.vector_size, dtype=np.float64)), Counter()
        for word, n in self._corpus_words(texts).items():
            vec = _lookup(kv, word)
            if vec is None:
                continue
            for piece in {t.value for t in self.tokenizer.model.tokenize(word)}:
                sums[piece] += n * vec
                counts[piece] += n
        for piece, i in vocab.items():
            vec = _lookup(kv, piece)                                       # rule 1
            if vec is None and counts[piece]:
                vec = sums[piece] / counts[piece]                          # rule 2
            if vec is None and piece.startswith("##"):
                vec = _lookup(kv, piece[2:])                               # fallback
            if vec is not None:
                matrix[i], found[i] = vec, True
        return matrix, found

    def _corpus_words(self, texts: list[str]) -> Counter:
        """Words as the tokenizer splits them (after its normaliser: lowercased, accents stripped)."""
        tok, words = self.tokenizer, Counter()
        for t in texts:
            norm = tok.normalizer.normalize_str(t) if tok.normalizer else t
            pre = tok.pre_tokenizer.pre_tokenize_str(norm) if tok.pre_tokenizer else [(w, None) for w in norm.split()]
            words.update(w for w, _ in pre)
        return words


def load_keyed_vectors(path: Path):
    from gensim.models import KeyedVectors
    if not path.exists():
        raise ConfigError(f"text.word2vec_vectors: no such file {str(path)!r}")
    try:
        if path.suffix in (".bin", ".txt", ".vec"):
            return KeyedVectors.load_word2vec_format(str(path), binary=path.suffix == ".bin")
        return KeyedVectors.load(str(path))
    except Exception as e:   # gensim raises many types (pickle, OSError, ValueError) for a bad file
        raise ConfigError(f"text.word2vec_vectors: cannot read {str(path)!r} as KeyedVectors: {e}") from None


def _lookup(kv, word: str):
    for w in (word, word.lower()):
        if w in kv.key_to_index:
            return np.asarray(kv[w], dtype=np.float64)
    return None


def to_init_vectors(matrix: np.ndarray, found: np.ndarray, d_model: int) -> InitVectors:
    """(V, dim) vectors -> (V, d_model) at the random init's scale (PCA down or zero-pad up)."""
    x = torch.from_numpy(np.asarray(matrix, dtype=np.float32))
    f = torch.from_numpy(found)
    if f.any():
        real = x[f]
        if real.shape[1] > d_model:
            centred = real - real.mean(0, keepdim=True)
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            x = (x - real.mean(0, keepdim=True)) @ v[:d_model].T              # (V, <= d_model)
        if x.shape[1] < d_model:      # narrower vectors (or fewer found rows than PCA components)
            x = torch.nn.functional.pad(x, (0, d_model - x.shape[1]))
        x = x * (INIT_STD / x[f].std().clamp_min(1e-12))
    else:
        x = torch.zeros(len(found), d_model)
    return InitVectors(x[:, :d_model].contiguous(), f)
