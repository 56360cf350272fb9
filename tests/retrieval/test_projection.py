"""A contrastively pretrained run embeds with its projection heads, chosen from its config, not by guessing."""
import numpy as np
import torch

from polyfuse.retrieval import FUSED, Embedder

from .conftest import save_untrained_pretrained_run


def test_pretrained_run_uses_contrastive_heads(pretrained_run, run_dir, synth):
    folder, pre = pretrained_run
    emb = Embedder.load(folder, device="cpu")
    assert emb.heads is not None and set(emb.heads) == {"caption", "image", "audio"} and emb.dim == 24
    table, vecs, present, _ = emb.embed_table(synth["test"], batch_size=8)
    # The same vectors as the contrastive objective's own embedding of the rows.
    rows = list(range(8))
    items, _ = emb.read_rows(table, rows)
    inputs = emb.predictor.processors.collate(items)
    with torch.no_grad():
        for col in ("caption", "image", "audio"):
            vec, pres = pre.objectives["contrastive"].column_vector(pre.model, col, inputs[col])
            w = torch.nn.functional.normalize(vec, dim=-1).numpy() * pres.numpy()[:, None]
            assert np.allclose(vecs[col][:8], w, atol=1e-5)
    # The fused row: the normalised mean of its columns' vectors, in the same 24-d space.
    s = sum(vecs[c] for c in ("caption", "image", "audio"))
    assert np.allclose(vecs[FUSED], s / np.linalg.norm(s, axis=1, keepdims=True), atol=1e-5)
    # A supervised run has no heads: pooled vectors of width d_model.
    sup = Embedder.load(run_dir, device="cpu")
    assert sup.heads is None and sup.dim == 32


def test_pretrained_run_without_contrastive_has_no_heads(synth, tmp_path):
    folder, _ = save_untrained_pretrained_run(tmp_path, synth["train"], objectives=("mlm",))
    emb = Embedder.load(folder, device="cpu")
    assert emb.heads is None and emb.dim == 32
    assert np.allclose(np.linalg.norm(emb.embed_query("loud street", "text")[1]), 1, atol=1e-5)
