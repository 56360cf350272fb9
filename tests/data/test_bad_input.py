"""Every kind of bad input gives an error naming the file, row and column; skip mode loses nothing."""
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.cli.main import main
from polyfuse.errors import InputError
from polyfuse.recipes.train import train_run
from tests.conftest import tiny_config


@pytest.fixture
def table(synth, tmp_path):
    """A copy of the synthetic training table next to its files, to break one cell at a time."""
    src = synth["train"].parent
    for sub in ("images", "audio"):
        shutil.copytree(src / sub, tmp_path / sub)
    df = pd.read_csv(synth["train"])[:40].reset_index(drop=True)
    df["caption"] = df["caption"].fillna("a plain caption")
    df["audio"] = df["audio"].fillna(df["audio"].dropna().iloc[0])
    return tmp_path, df


def _train(folder, df, **train):
    df.to_csv(folder / "t.csv", index=False)
    cfg = tiny_config(train={"epochs": 1, **train})
    return train_run(cfg, folder / "t.csv", out=folder / "run", progress=False)


def _bomb(path):
    Image.new("1", (7000, 7000)).save(path)       # 49 Mpx, a few kB on disk


def _long_audio(path):
    sf.write(path, np.zeros(601 * 1000, dtype=np.int16), 1000, subtype="PCM_16")   # 601 s > 600 s limit


CASES = {
    "missing image file": ("image", lambda d: "images/nope.png", "image file not found"),
    "corrupt image": ("image", lambda d: (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage") and "bad.png",
                      "corrupt|not a supported image"),
    "truncated image": ("image", lambda d: _truncate(d / "images/00003.png", d / "trunc.png") and "trunc.png",
                        "corrupt or truncated"),
    "unsupported image format": ("image", lambda d: (d / "x.png").write_text("hello") and "x.png",
                                 "not a supported image format"),
    "decompression bomb": ("image", lambda d: _bomb(d / "bomb.png") or "bomb.png", "over the limit"),
    "missing audio file": ("audio", lambda d: "audio/none.wav", "audio file not found"),
    "corrupt audio": ("audio", lambda d: (d / "bad.wav").write_bytes(b"RIFF1234WAVEjunk") and "bad.wav",
                      "corrupt or unsupported audio"),
    "absurdly long audio": ("audio", lambda d: _long_audio(d / "long.wav") or "long.wav", "601.0 s long"),
    "empty text": ("caption", lambda d: "   ", "text is empty"),
    "missing label": ("label", lambda d: np.nan, "missing label"),
}


def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return True


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cell_names_table_row_and_column(table, case):
    folder, df = table
    column, make, message = CASES[case]
    df[column] = df[column].astype(object)
    df.loc[7, column] = make(folder)
    with pytest.raises(InputError, match=message) as err:
        _train(folder, df)
    e = err.value
    assert (e.row, e.column) == (7, column), str(e)
    assert "t.csv" in str(e) and "row 7" in str(e) and f"column '{column}'" in str(e)
    if column in ("image", "audio"):
        assert e.file is not None and str(df.loc[7, column]).strip() in e.file
    # A failed run never leaves a model that looks finished.
    assert not (folder / "run" / "config.json").exists()
    assert not (folder / "run" / "model.safetensors").exists()


def test_non_utf8_text_names_row_and_column(table):
    folder, df = table
    df.loc[5, "caption"] = "PLACEHOLDER"
    df.to_csv(folder / "t.csv", index=False)
    raw = (folder / "t.csv").read_bytes().replace(b"PLACEHOLDER", b"caf\xe9 au lait")
    (folder / "t.csv").write_bytes(raw)
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        train_run(tiny_config(), folder / "t.csv", out=folder / "run", progress=False)
    assert (err.value.row, err.value.column) == (5, "caption")


def test_unknown_column_lists_the_columns(table):
    folder, df = table
    df.to_csv(folder / "t.csv", index=False)
    cfg = tiny_config(schema={"image": ["picture"]})
    with pytest.raises(InputError, match="unknown column 'picture'; the table has: id, caption, image"):
        train_run(cfg, folder / "t.csv", out=folder / "run", progress=False)


def test_skip_mode_trains_on_good_rows_and_lists_the_bad(table):
    folder, df = table
    df["image"] = df["image"].astype(object)
    df.loc[3, "image"] = "images/gone.png"
    df.loc[9, "caption"] = "  "
    predictor, summary = _train(folder, df, on_bad_row="skip")
    skipped = pd.read_csv(folder / "run" / "skipped.csv")
    assert skipped["row"].tolist() == [3, 9]
    assert skipped["column"].tolist() == ["image", "caption"]
    assert "not found" in skipped["reason"][0] and "empty" in skipped["reason"][1]
    assert (folder / "run" / "config.json").exists()
    log = (folder / "run" / "log.jsonl").read_text()
    assert log.count("\n") == 1


def test_cli_reports_bad_input_without_a_traceback(table, capsys):
    folder, df = table
    df["audio"] = df["audio"].astype(object)
    df.loc[2, "audio"] = "audio/missing.wav"
    df.to_csv(folder / "t.csv", index=False)
    code = main(["train", "--train", str(folder / "t.csv"), "--label", "label", "--text", "caption",
                 "--image", "image", "--audio", "audio", "--out", str(folder / "run"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "row 2" in err and "column 'audio'" in err and "audio file not found" in err
    assert "Traceback" not in err


def test_empty_table_is_a_clear_error(tmp_path):
    (tmp_path / "e.csv").write_text("caption,label\n")
    with pytest.raises(InputError, match="table is empty"):
        train_run(tiny_config(), tmp_path / "e.csv", out=tmp_path / "run", progress=False)
