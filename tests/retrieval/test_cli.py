"""embed -> index -> search end to end through the CLI, on the synthetic table and an untrained run."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from polyfuse.errors import InputError
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
                 "--target", "image", "--zero-shot", "shape", "--prompt", "a {} bar", "--by", "shape",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert "caption->image" in report["results"]
    sliced = report["results"]["caption->image"]
    assert sum(sliced[f"shape={v}"]["queries"] for v in ("horizontal", "vertical")) == sliced["flat"]["queries"]
    with pytest.raises(InputError, match="nope"):
        evaluate_retrieval(Embedder.load(run_dir), synth["test"], "text", "image", by="nope")
    zs = report["zero_shot"]                        # the image side is classified, not the text
    assert zs["column"] == "image" and zs["classes"] == 2 and 0 <= zs["accuracy"] <= 1
    e = Embedder.load(run_dir)
    vecs = np.concatenate([e.embed_query(w, "text")[1] for w in ("loud", "quiet")])
    labels, scores = zero_shot(e, vecs, ["loud", "quiet"])
    assert labels.tolist() == ["loud", "quiet"] and np.allclose(np.diag(scores), 1, atol=1e-5)


def test_column_names_never_become_paths(synth, tmp_path):
    """A column called '../cap' or 'a/b' names files inside the output folders, never outside them."""
    from polyfuse.data.manifest import read_table
    from polyfuse.data.processors import Processors
    from polyfuse.inference import Predictor
    from polyfuse.data.labels import LabelCodec
    from polyfuse.model import PolyfuseModel
    from tests.conftest import tiny_config
    df = pd.read_csv(synth["test"]).rename(columns={"caption": "../cap", "image": "a/b"})
    for col in ("a/b", "audio"):
        df[col] = [p if pd.isna(p) else str(synth["test"].parent / p) for p in df[col]]
    work = tmp_path / "work"
    work.mkdir()
    df.to_csv(work / "t.csv", index=False)
    cfg = tiny_config(schema={"text": ["../cap"], "image": ["a/b"], "audio": ["audio"], "label": "label"})
    procs = Processors.build(cfg, cfg.schema).fit(read_table(work / "t.csv"))
    labels = LabelCodec("classification").fit(df["label"])
    model = PolyfuseModel(cfg, cfg.schema, labels.n_outputs, procs.text.vocab_size).eval()
    Predictor(cfg, procs, labels, model).save(work / "run")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["embed", str(work / "run"), "--data", str(work / "t.csv"), "--out", str(work / "emb"),
                 "--quiet"]) == 0
    assert main(["index", str(work / "emb"), "--out", str(work / "idx")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before            # nothing written beside work/
    assert {"_cap.npy", "a_b.npy"} <= {p.name for p in (work / "emb").iterdir()}
    assert (work / "idx" / "a_b" / "meta.json").exists() and (work / "idx" / "_cap" / "meta.json").exists()
    assert len(Index.load(work / "idx", target="a/b")) == len(df)
    assert main(["search", str(work / "idx"), "--model", str(work / "run"), "--text", "loud", "--target", "a/b",
                 "--k", "2"]) == 0


def test_file_stems_that_collide_are_refused():
    from polyfuse.errors import PolyfuseError
    from polyfuse.retrieval.embed import check_file_stems, file_stem
    assert file_stem("../../etc/passwd") == "_.._etc_passwd" and file_stem("...") == "_"
    with pytest.raises(PolyfuseError, match="would share the file name"):
        check_file_stems(["a b", "a_b"])


def test_index_reports_recall_of_approximate_kinds(emb, tmp_path, capsys):
    assert main(["index", str(emb), "--out", str(tmp_path / "exact")]) == 0
    assert "(exact)" in capsys.readouterr().out                       # a small collection: auto is flat
    assert main(["index", str(emb), "--out", str(tmp_path / "ivf"), "--kind", "ivf", "--target-recall", "0.9"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "ivf" / "image" / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["recall"]["target"] == 0.9 and meta["recall"]["queries"] > 0
    assert f"image: {meta['count']} vectors, ivf, recall@{meta['recall']['k']} {meta['recall']['recall']:.4f}" in printed
