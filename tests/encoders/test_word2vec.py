"""--text-encoder word2vec: gensim vectors initialise the scratch text encoder's token embeddings."""
from __future__ import annotations

import numpy as np
import torch

from polyfuse.config import Config
from polyfuse.data.pretrained import tower_sources
from polyfuse.data.processors import Processors
from polyfuse.data.word2vec import Word2VecTextProcessor
from polyfuse.inference import Predictor
from polyfuse.model import PolyfuseModel
from polyfuse.recipes.train import train_run

from .conftest import rng_text


def w2v_config(**text):
    return Config.from_dict({"schema": {"text": ["t"], "label": "y", "task": "classification"},
                             "text": {"encoder": "word2vec", "vocab_size": 80, **text},
                             "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}})


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_trained_vectors_initialise_embeddings_deterministically():
    cfg = w2v_config()
    texts = rng_text(200) + ["running singing jumping walking"] * 5
    procs = Processors.build(cfg, cfg.schema)
    procs.text.fit(texts)
    assert isinstance(procs.text, Word2VecTextProcessor)
    vecs = procs.text.init_vectors
    pieces = {p for t in texts for p in procs.text.tokenizer.encode(t, add_special_tokens=False).tokens}
    vocab = procs.text.tokenizer.get_vocab()
    assert {vocab[p] for p in pieces} == set(vecs.found.nonzero().flatten().tolist())   # subword pieces included
    assert abs(float(vecs.vectors[vecs.found].std()) - 0.02) < 1e-4
    again = Processors.build(cfg, cfg.schema)
    again.text.fit(texts)
    assert torch.equal(again.text.init_vectors.vectors, vecs.vectors)
    torch.manual_seed(0)
    model = PolyfuseModel(cfg, cfg.schema, 2, procs.text.vocab_size, towers=tower_sources(procs))
    tok = model.encoders["text"].tok.weight.detach()
    torch.testing.assert_close(tok[vecs.found], vecs.vectors[vecs.found])


def test_keyed_vectors_map_words_and_subword_pieces(tmp_path):
    from gensim.models import KeyedVectors
    rng = np.random.default_rng(0)
    words = ["calm", "river", "running", "singing", "walking", "street"]
    kv = KeyedVectors(vector_size=16)
    kv.add_vectors(words, rng.normal(size=(len(words), 16)).astype(np.float32))
    kv.save(str(tmp_path / "vectors.kv"))
    cfg = w2v_config(word2vec_vectors=str(tmp_path / "vectors.kv"), vocab_size=34)
    proc = Processors.build(cfg, cfg.schema).text
    texts = ["calm river running", "singing walking street", "running singing", "calm street"] * 3
    proc.fit(texts)
    vocab, vecs = proc.tokenizer.get_vocab(), proc.init_vectors
    # Rule 1: a piece that is a word of the file takes its vector (only scaled: same direction).
    whole = [w for w in words if w in vocab]
    assert whole
    for w in whole:
        assert cosine(vecs.vectors[vocab[w]], kv[w]) > 0.9999
    # Rule 2: other pieces take the count-weighted mean of the corpus words that contain them.
    counts = {w: sum(t.split().count(w) for t in texts) for w in words}
    sub = [p for p in vocab if p not in words and vecs.found[vocab[p]]]      # e.g. "ing", "sing", "reet"
    assert len(sub) >= 3
    for p in sub:
        having = [w for w in words if p in {t.value for t in proc.tokenizer.model.tokenize(w)}]
        mean = sum(counts[w] * kv[w] for w in having) / sum(counts[w] for w in having)
        assert cosine(vecs.vectors[vocab[p]], mean) > 0.9999
    assert not vecs.found[vocab["[CLS]"]]


def test_train_and_reload_with_word2vec(tmp_path):
    import pandas as pd
    texts = rng_text(40, seed=3)
    pd.DataFrame({"t": texts, "y": [int("calm" in t) for t in texts]}).to_csv(tmp_path / "train.csv", index=False)
    cfg = w2v_config().merged({"train": {"epochs": 1, "batch_size": 8}})
    pred, _ = train_run(cfg, tmp_path / "train.csv", None, tmp_path / "run", progress=False)
    again = Predictor.load(tmp_path / "run")
    data = again.encode(again.read(tmp_path / "train.csv"))
    np.testing.assert_allclose(again.predict(data).outputs, pred.predict(data).outputs, atol=1e-6)
