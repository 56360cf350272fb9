"""embed -> index -> search end to end through the CLI, on the synthetic table and an untrained run."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from polyfuse.cli.main import main
from polyfuse.retrieval import Embedder, Index, evaluate_retrieval, load_embeddings, zero_shot


@pytest.fixture(scope="module")
def emb(run_dir, synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "emb"
    assert main(["embed", str(run_dir), "--data", str(synth["test"]), "--out", str(out), "--batch-size", "7",
                 "--id-column", "id", "--quiet"]) == 0
    return out


def test_embed_index_search(emb, run_dir, other_run_dir, synth, tmp_path, capsys):
    idx = tmp_path / "idx"
    meta, vecs, present, rows = load_embeddings(emb)
    n = len(pd.read_csv(synth["test"]))
    assert set(meta["names"]) == {"caption", "image", "audio", "fused"} and meta["rows"] == n
    for name in meta["names"]:
        norms = np.linalg.norm(vecs[name][present[name]], axis=1)
        assert np.allclose(norms, 1, atol=1e-5) and vecs[name].shape == (n, meta["dim"])
    assert present["image"].all() and not present["caption"].all()        # synth leaves some captions empty

    assert main(["index", str(emb), "--out", str(idx)]) == 0
    assert main(["search", str(idx), "--model", str(run_dir), "--text", "loud morning", "--target", "image",
                 "--k", "3", "--where", "shape=vertical", "--out", str(tmp_path / "hits.csv")]) == 0
    hits = pd.read_csv(tmp_path / "hits.csv")
    assert len(hits) == 3 and (hits["shape"] == "vertical").all() and hits["_score"].is_monotonic_decreasing
    # The text query's vector, searched by hand over the image vectors, gives the same top hit.
    e = Embedder.load(run_dir)
    q = e.embed_query("loud morning", "text")[1]
    ok = present["image"] & (rows["shape"] == "vertical").to_numpy()
    best = np.flatnonzero(ok)[np.argmax(vecs["image"][ok] @ q[0])]
    assert str(hits["_id"][0]) == rows["_id"][best]

    # An image query against the audio index; zero-shot labels come from a row column.
    image = synth["test"].parent / rows["image"][0]
    assert main(["search", str(idx), "--model", str(run_dir), "--image", str(image), "--target", "audio"]) == 0
    assert main(["search", str(idx), "--model", str(run_dir), "--image", str(image), "--zero-shot-labels", "shape",
                 "--prompt", "a {} bar"]) == 0
    out = capsys.readouterr().out
    assert "horizontal" in out and "vertical" in out

    # Another model's query is refused with a clear error; so is an empty query.
    assert main(["search", str(idx), "--model", str(other_run_dir), "--text", "loud", "--target", "image"]) == 2
    assert "built from model" in capsys.readouterr().err
    assert main(["search", str(idx), "--model", str(run_dir), "--text", "  ", "--target", "image"]) == 2
    assert "empty text query" in capsys.readouterr().err

    # Adding rows: the same collection again doubles every index.
    assert main(["index", str(emb), "--out", str(idx), "--add"]) == 0
    assert len(Index.load(idx, target="image")) == 2 * n
    assert main(["index", str(emb), "--out", str(idx)]) == 2             # refuses to overwrite


def test_embed_resumes_where_it_stopped(emb, run_dir, synth, tmp_path):
    full, part = emb, tmp_path / "part"
    shutil.copytree(emb, part)
    # Pretend it stopped after 10 rows, with garbage after them: a rerun redoes only rows 10 and on.
    (part / "progress.json").write_text(json.dumps({"done": 10}))
    arr = np.load(part / "image.npy", mmap_mode="r+")
    arr[10:] = 0
    arr.flush()
    del arr
    assert main(["embed", str(run_dir), "--data", str(synth["test"]), "--out", str(part), "--quiet",
                 "--batch-size", "5", "--id-column", "id"]) == 0
    a, b = load_embeddings(full)[1], load_embeddings(part)[1]
    for name in a:
        assert np.allclose(a[name], b[name], atol=1e-5)
    with pytest.raises(Exception, match="unfinished"):
        (part / "progress.json").write_text(json.dumps({"done": 3}))
        load_embeddings(part)


def test_evaluate_retrieval_and_zero_shot(run_dir, synth, tmp_path):
    res = evaluate_retrieval(Embedder.load(run_dir), synth["test"], "audio", "image", match=["label"],
                             kinds=("flat", "hnsw"))
    assert set(res) == {"audio->image", "image->audio"}
    for by_kind in res.values():
        for m in by_kind.values():
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and m["median_rank"] >= 1
        assert by_kind["flat"] == pytest.approx(by_kind["hnsw"], abs=0.05)   # tiny set: HNSW is near exact
    assert main(["evaluate-retrieval", str(run_dir), "--data", str(synth["test"]), "--query", "text",
                 "--target", "image", "--out", str(tmp_path / "r.json")]) == 0
    assert "caption->image" in json.loads((tmp_path / "r.json").read_text())["results"]
    e = Embedder.load(run_dir)
    vecs = np.concatenate([e.embed_query(w, "text")[1] for w in ("loud", "quiet")])
    labels, scores = zero_shot(e, vecs, ["loud", "quiet"])
    assert labels.tolist() == ["loud", "quiet"] and np.allclose(np.diag(scores), 1, atol=1e-5)
