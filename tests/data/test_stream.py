"""Streaming tables: chunks equal a whole read, tar shards decode like files on disk, bad members are named."""
import io
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from polyfuse.data.manifest import infer_modality, read_table
from polyfuse.data.processors import Processors
from polyfuse.data.sources import expand_braces
from polyfuse.data.stream import iter_table, scan_table
from polyfuse.data.synthetic import write_shards
from polyfuse.errors import InputError
from tests.conftest import tiny_config

MEMBERS = {"caption": "txt", "image": "png", "audio": "wav", "label": "cls"}


def cells(df):
    """Every cell, missing as None: chunks agree with a whole read cell for cell, though a column's
    dtype may differ between chunks (a chunk without missing captions reads them as strings)."""
    return df.astype(object).where(df.notna(), None).values.tolist()


def gathered(source, chunk_rows):
    chunks = list(iter_table(source, chunk_rows))
    assert all(len(c) <= chunk_rows for c in chunks)
    starts = [c.df.index[0] for c in chunks]
    assert starts == [0] + list(np.cumsum([len(c) for c in chunks])[:-1])      # global row numbers
    return pd.concat([c.df for c in chunks]), chunks


def test_csv_chunks_are_the_whole_read(synth):
    whole = read_table(synth["train"]).df
    df, chunks = gathered(synth["train"], 7)
    pd.testing.assert_frame_equal(df, whole)
    assert scan_table(synth["train"], 7).fingerprint == scan_table(synth["train"], 1000).fingerprint
    assert len(chunks) == -(-len(whole) // 7) and chunks[0].name == str(synth["train"])


def test_jsonl_chunks_are_the_whole_read(synth, tmp_path):
    path = tmp_path / "t.jsonl"
    pd.read_csv(synth["train"]).to_json(path, orient="records", lines=True)
    df, whole = gathered(path, 10)[0], read_table(path).df
    assert list(df.columns) == list(whole.columns) and df.index.tolist() == whole.index.tolist()
    assert cells(df) == cells(whole)


def test_parquet_folder_is_one_table(synth, tmp_path):
    whole = pd.read_csv(synth["train"], dtype=str, keep_default_na=False, na_values=[""])
    folder = tmp_path / "pq"
    folder.mkdir()
    for i, a in enumerate(range(0, len(whole), 40)):                 # three files, read in name order
        whole.iloc[a:a + 40].to_parquet(folder / f"part-{i:02d}.parquet", index=False)
    (folder / "_SUCCESS").write_text("")                              # what Spark leaves next to them
    df, chunks = gathered(folder, 15)
    assert df["id"].tolist() == whole["id"].tolist() and {c.name for c in chunks} == {
        str(p) for p in sorted(folder.glob("*.parquet"))}
    pd.testing.assert_frame_equal(df.reset_index(drop=True).astype(str), whole.astype(str))
    assert read_table(folder).df["id"].tolist() == whole["id"].tolist()  # read whole too
    assert scan_table(folder, 15, label="label").rows == len(whole)


def test_brace_patterns():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]


@pytest.fixture(scope="module")
def shards(synth, tmp_path_factory):
    df = pd.read_csv(synth["train"])
    out = tmp_path_factory.mktemp("shards")
    write_shards(df, synth["train"].parent, out, per_shard=50, members=MEMBERS)
    return df, out, str(out / "shard-{000..002}.tar")


def test_tar_shards_are_a_table_of_bytes(shards, synth):
    df, out, pattern = shards
    tar, chunks = gathered(pattern, 20)
    assert len(tar) == len(df) and tar["__key__"].tolist() == [f"{i:06d}" for i in range(len(df))]
    assert [c.name for c in chunks].count(str(out / "shard-000.tar")) == 3    # 20 + 20 + 10: no chunk spans shards
    assert {infer_modality(tar[c]) for c in ("png", "wav", "txt")} == {"image", "audio", "text"}
    scan = scan_table(pattern, 20, label="cls")
    assert scan.rows == len(df) and scan.labels == {str(k): v for k, v in df["label"].value_counts().items()}
    # The same cells decode to the same tensors from the shard's bytes as from the files on disk.
    procs = Processors.build(tiny_config(), tiny_config().schema).fit(read_table(synth["train"]))
    disk, whole_tar = read_table(synth["train"]), read_table(pattern)
    for row in range(0, len(df), 7):
        for col, ext, modality in (("image", "png", "image"), ("audio", "wav", "audio")):
            a = procs.process_cell(disk, row, col, modality)
            b = procs.process_cell(whole_tar, row, ext, modality)
            assert (a is None) == (b is None)                             # no member where the cell was empty
            assert a is None or all(torch.equal(a[k], b[k]) for k in a)
    assert scan_table(pattern, 20).fingerprint != scan_table(str(out / "shard-000.tar"), 20).fingerprint


def test_corrupt_member_is_named_by_shard_and_key(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for key, data in (("a1", b"\x89PNG not really"), ("a2", b"also not")):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    procs = Processors.build(tiny_config(), tiny_config().schema)
    chunk = next(iter_table(bad, 10))
    with pytest.raises(InputError) as e:
        procs.process_cell(chunk, 1, "png", "image")
    assert e.value.table == str(bad) and e.value.row == 1 and e.value.column == "png"
    assert e.value.file == f"{bad}:a2.png" and "a2.png" in str(e.value)
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(bad.read_bytes()[:700])
    with pytest.raises(InputError, match="unreadable tar shard"):
        list(iter_table(truncated, 10))
    with pytest.raises(InputError, match="tar shard not found"):
        list(iter_table(str(tmp_path / "s-{0..1}.tar"), 10))


def test_scan_counts_labels_across_chunks_of_different_dtypes(tmp_path):
    path = tmp_path / "t.jsonl"
    # rows 0-2 read as ints; rows 3-5 include a missing label, so pandas reads that chunk as floats
    pd.DataFrame({"x": list("abcdef"), "y": [1, 2, 1, 2, None, 1]}).to_json(path, orient="records", lines=True)
    scan = scan_table(path, 3, label="y")
    assert scan.rows == 6 and scan.columns == ["x", "y"] and scan.labels == {"1": 3, "2": 2}
    assert scan.fingerprint == scan_table(path, 2).fingerprint == scan_table(path, 100).fingerprint
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    with pytest.raises(InputError, match="table is empty"):
        list(iter_table(empty, 10))
