"""Search from any modality to any other, and zero-shot classification as search against label prompts.

    emb = Embedder.load("runs/pre"); idx = Index.load("idx/", target="image")
    hits = search(idx, emb, text="a dog barking", k=10, where={"group": "animals-nature"})
    labels, scores = zero_shot(emb, image_vectors, ["cat", "dog"], prompt="a photo of a {}")
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import PolyfuseError
from .config import RetrievalConfig
from .embed import Embedder
from .index import Index


def query_vector(embedder: Embedder, text=None, image=None, audio=None, column: str | None = None) -> np.ndarray:
    """Exactly one of text / image path / audio path -> (1, D) normalised vector."""
    given = {m: v for m, v in (("text", text), ("image", image), ("audio", audio)) if v is not None}
    if len(given) != 1:
        raise PolyfuseError("give exactly one query: text, image or audio" if not given else
                            f"give one query at a time, got {', '.join(given)}")
    (modality, value), = given.items()
    return embedder.embed_query(value, modality, column)[1]


def search(index: Index, embedder: Embedder, text=None, image=None, audio=None, k: int | None = None,
           where: dict | None = None, column: str | None = None) -> pd.DataFrame:
    """Hits (rank, score, _id, original row) for one query, after checking the index's model."""
    q = query_vector(embedder, text, image, audio, column)
    return index.search(q, k, where, model_id=embedder.model_id)


def label_index(embedder: Embedder, labels, prompt: str | None = None, column: str | None = None) -> Index:
    """A flat index over the text vectors of one prompt per label ('{}' replaced by the label)."""
    labels = [str(x) for x in dict.fromkeys(labels) if x is not None and not pd.isna(x) and str(x) != ""]
    if not labels:
        raise PolyfuseError("zero-shot classification needs at least one label")
    prompt = RetrievalConfig().merged(prompt=prompt).prompt
    column = column or embedder.column_for("text")
    vecs = np.concatenate([embedder.embed_query(prompt.format(x), "text", column)[1] for x in labels])
    return Index.build(vecs, rows=pd.DataFrame({"label": labels}), ids=labels, kind="flat",
                       model_id=embedder.model_id, name="labels", modality="text")


def zero_shot(embedder: Embedder, vectors, labels, prompt: str | None = None,
              column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) vectors -> (predicted label per row (Q,), scores (Q, L) in label order)."""
    index = label_index(embedder, labels, prompt, column)
    vectors = np.asarray(vectors, np.float32).reshape(-1, index.dim)
    scores, pos = index.search_ids(vectors, k=len(index), model_id=embedder.model_id)
    names = index.rows["label"].to_numpy(object)
    full = np.empty_like(scores)
    np.put_along_axis(full, pos, scores, axis=1)          # back from ranked order to label order
    return names[pos[:, 0]], full


def parse_where(items) -> dict:
    """['group=flags', 'group=symbols', 'author=X'] -> {'group': ['flags', 'symbols'], 'author': ['X']}."""
    where = {}
    for item in items or []:
        col, sep, value = item.partition("=")
        if not sep or not col:
            raise PolyfuseError(f"--where expects COLUMN=VALUE, got {item!r}")
        where.setdefault(col.strip(), []).append(value)
    return where
