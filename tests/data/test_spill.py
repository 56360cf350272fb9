"""Table files are read in chunks into a memory-mapped Arrow copy (manifest.spill): the result is
the whole read, cell for cell and dtype for dtype, and its text lives in the mapping, not the heap."""
import json
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from polyfuse.data.manifest import read_table, read_whole, spill
from polyfuse.errors import InputError


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"caption": [f"a {'red' if i % 3 else 'blue'} thing {i}" if i % 11 else "" for i in range(n)],
                         "image": [f"img/{i:05d}.png" for i in range(n)],
                         "score": rng.normal(size=n).round(3), "label": rng.integers(0, 4, n)})


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.csv.gz", "t.parquet", "t.jsonl"])
def test_chunks_spilled_equal_the_whole_read(tmp_path, name):
    df, path = _table(100), tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    whole = read_whole(path, tmp_path).df
    spilled = spill(path, tmp_path, chunk_rows=7)
    pd.testing.assert_frame_equal(spilled.df, whole)
    pd.testing.assert_frame_equal(read_table(path).df, whole)
    assert spilled.name == str(path) and spilled.base_dir == tmp_path


def test_json_chunks_of_different_types_are_promoted(tmp_path):
    """A JSON lines chunk whose labels are all present reads them as ints, one with a missing label as
    floats: the spilled table holds floats throughout, as a whole read does."""
    path = tmp_path / "t.jsonl"
    rows = [{"text": f"row {i}", "label": (None if i == 12 else i % 3)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = read_whole(path, tmp_path).df
    spilled = spill(path, tmp_path, chunk_rows=5).df
    assert spilled["label"].dtype == whole["label"].dtype == np.float64
    pd.testing.assert_frame_equal(spilled, whole)


def test_nested_json_cells_are_read_whole(tmp_path):
    """Lists (several reference captions per row) stay Python lists: the chunked copy declines."""
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.png", "captions": [f"a {i}", f"b {i}"]}) + "\n" for i in range(9)))
    assert spill(path, tmp_path, chunk_rows=4) is None
    table = read_table(path)
    assert table.df.at[8, "captions"] == ["a 8", "b 8"]


def test_bad_text_in_a_later_chunk_names_its_row(tmp_path):
    path = tmp_path / "t.csv"
    data = _table(30).to_csv(index=False).encode()
    lines = data.split(b"\n")
    lines[1 + 23] = lines[1 + 23].replace(b"thing", b"th\xffing")       # data row 23, in the fourth chunk of 7
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError) as e:
        spill(path, tmp_path, chunk_rows=7)
    assert e.value.row == 23 and e.value.column == "caption" and str(path) in str(e.value)


def test_the_text_lives_in_the_mapping_not_the_heap(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "t.csv"
    pd.DataFrame({"caption": [f"caption number {i} " * 4 for i in range(40_000)]}).to_csv(path, index=False)
    size = path.stat().st_size                                              # about 3 MB of text
    before = pa.total_allocated_bytes()
    whole = read_whole(path, tmp_path)
    held_whole = pa.total_allocated_bytes() - before
    del whole
    before = pa.total_allocated_bytes()
    table = read_table(path)
    held = pa.total_allocated_bytes() - before
    assert len(table) == 40_000 and table.df.at[39_999, "caption"].startswith("caption number 39999")
    assert held_whole > size / 2 and held < size / 20, (held_whole, held, size)
    assert not list((tmp_path / "tmp").iterdir())                          # the spill files are gone
