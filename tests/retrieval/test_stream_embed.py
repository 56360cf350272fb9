"""`polyfuse embed` streams: tar shards embed like the same files on disk, in any chunking."""
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from polyfuse.cli.main import main
from polyfuse.data.synthetic import write_shards
from polyfuse.retrieval import load_embeddings
from tests.conftest import tiny_config
from tests.retrieval.conftest import save_untrained_run

# WebDataset columns are named by extension; the same table on disk gets the same column names.
NAMES = {"caption": "txt", "image": "png", "audio": "wav", "label": "cls"}


@pytest.fixture(scope="module")
def by_ext(synth, tmp_path_factory):
    """The test table with columns named by extension (on disk and as 10-row tar shards), and a run on them."""
    tmp = tmp_path_factory.mktemp("by_ext")
    df = pd.read_csv(synth["test"])
    csv = synth["test"].parent / "test_by_ext.csv"
    df.rename(columns=NAMES).to_csv(csv, index=False)
    write_shards(df, synth["test"].parent, tmp / "shards", per_shard=10, members=NAMES)
    cfg = tiny_config(schema={"text": ["txt"], "image": ["png"], "audio": ["wav"], "label": "cls"})
    return df, csv, str(tmp / "shards" / "shard-{000..002}.tar"), save_untrained_run(tmp / "run", csv, cfg=cfg)


def test_tar_shards_embed_like_files_on_disk(by_ext, tmp_path):
    df, csv, pattern, run = by_ext
    assert main(["embed", str(run), "--data", str(csv), "--out", str(tmp_path / "disk"), "--quiet"]) == 0
    assert main(["embed", str(run), "--data", pattern, "--out", str(tmp_path / "tar"), "--quiet",
                 "--chunk-rows", "4", "--batch-size", "3"]) == 0
    (m1, v1, p1, r1), (m2, v2, p2, r2) = load_embeddings(tmp_path / "disk"), load_embeddings(tmp_path / "tar")
    assert m1["rows"] == m2["rows"] == len(df)
    for name in m1["names"]:
        assert np.array_equal(p1[name], p2[name]) and np.allclose(v1[name], v2[name], atol=1e-5), name
    assert r2["_id"].tolist() == [str(i) for i in range(len(df))]
    assert r2["png"][0].endswith("shard-000.tar:000000.png")           # a name, not the image's bytes
    assert r2["txt"].fillna("").tolist() == r1["txt"].fillna("").tolist()

    # Resuming a streamed embedding redoes only what is missing and ends identical.
    (tmp_path / "tar" / "progress.json").write_text(json.dumps({"done": 9}))
    assert main(["embed", str(run), "--data", pattern, "--out", str(tmp_path / "tar"), "--quiet",
                 "--chunk-rows", "4"]) == 0
    assert all(np.allclose(v2[n], load_embeddings(tmp_path / "tar")[1][n]) for n in m2["names"])


def test_a_corrupt_member_names_shard_row_and_key(by_ext, tmp_path, capsys):
    df, _, pattern, run = by_ext
    good, bad = pattern.replace("{000..002}", "001"), tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:        # shard 1 with one PNG garbled
        for m in src.getmembers():
            data = b"not a png" if m.name == "000013.png" else src.extractfile(m).read()
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    assert main(["embed", str(run), "--data", str(bad), "--out", str(tmp_path / "e1"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, row 3, column 'png', file '{bad}:000013.png'" in err
    assert main(["embed", str(run), "--data", str(bad), "--out", str(tmp_path / "e2"), "--quiet",
                 "--on-bad-row", "skip"]) == 0
    skipped = json.loads((tmp_path / "e2" / "skipped.json").read_text())
    assert [(s["row"], s["column"]) for s in skipped] == [(3, "png")]
    assert not load_embeddings(tmp_path / "e2")[2]["png"][3] and load_embeddings(tmp_path / "e2")[2]["png"][4]
