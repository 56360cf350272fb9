"""Polyfuse from Python, end to end on a synthetic table (runs anywhere, no downloads):
fit / predict / predict_proba / score, save and load, then cross-modal search over the same rows.

    python examples/python_api.py [--rows 600] [--epochs 8] [--out runs/example]
"""
import argparse
from pathlib import Path

import pandas as pd

import polyfuse
from polyfuse.data.synthetic import write_splits
from polyfuse.retrieval import Embedder, Index, search


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="runs/example")
    args = p.parse_args(argv)
    out = Path(args.out)

    # 1. A table: a caption, an image path and an audio path per row, and a label that needs two of them.
    paths = write_splits(out / "data", n=args.rows, seed=0)
    train = pd.read_csv(paths["train"])
    print(train.head(3).to_string(index=False))

    # 2. scikit-learn style: the constructor only stores settings; fit does the work.
    model = polyfuse.Polyfuse(label="label", text="caption", image="image", audio="audio", size="tiny",
                              epochs=args.epochs, base_dir=paths["train"].parent, out=str(out / "run"))
    model.fit(train, pd.read_csv(paths["val"]))
    test = pd.read_csv(paths["test"])
    print("classes:", model.classes_.tolist())
    print("first predictions:", list(model.predict(test.head(5))), "truth:", list(test["label"].head(5)))
    print("probabilities of row 0:", [round(float(x), 3) for x in model.predict_proba(test.head(1))[0]])
    accuracy = model.score(test)
    print(f"test accuracy: {accuracy:.3f}")

    # 3. The run folder reloads to the same predictions.
    same = polyfuse.load(out / "run")
    same.base_dir = paths["test"].parent
    assert (same.predict(test) == model.predict(test)).all()

    # 4. Search: embed the test rows' images, then find the images nearest to a caption.
    emb = Embedder.load(out / "run")
    table, vectors, present, _ = emb.embed_table(paths["test"], names=["image"])
    index = Index.build(vectors["image"][present["image"]], rows=table.df[present["image"]],
                        model_id=emb.model_id, name="image")
    hits = search(index, emb, text="a loud morning", k=3)
    print(hits[["_rank", "_score", "image", "label"]].to_string(index=False))
    return accuracy


if __name__ == "__main__":
    main()
