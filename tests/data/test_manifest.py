import pandas as pd
import pytest

from polyfuse.config import SchemaConfig
from polyfuse.data.manifest import infer_task, read_table, resolve_schema
from polyfuse.errors import InputError


def test_every_table_format_reads_the_same(tmp_path):
    df = pd.DataFrame({"caption": ["a red bird sings", "two dogs bark loudly"], "image": ["a.png", "b.png"],
                       "label": ["x", "y"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.tsv", "t.jsonl", "t.parquet"):
        table = read_table(tmp_path / name)
        assert table.df["caption"].tolist() == df["caption"].tolist(), name
        assert table.resolve("a.png") == tmp_path / "a.png"     # relative to the table's folder


def test_schema_is_inferred_from_extensions_and_content(tmp_path):
    df = pd.DataFrame({"note": ["a long sentence here", "another one there"], "pic": ["x.jpg", "y.png"],
                       "clip": ["a.wav", "b.flac"], "id": ["1", "2"], "label": ["a", "b"]})
    schema = resolve_schema(read_table(df, tmp_path), SchemaConfig(label="label"))
    assert (schema.text, schema.image, schema.audio, schema.task) == (["note"], ["pic"], ["clip"], "classification")


def test_given_columns_must_exist(tmp_path):
    table = read_table(pd.DataFrame({"a": ["x y"], "label": [1]}), tmp_path)
    with pytest.raises(InputError, match="unknown column 'img'.*the table has: a, label"):
        resolve_schema(table, SchemaConfig(image=["img"], label="label"))


@pytest.mark.parametrize("values, task", [
    (["cat", "dog"], "classification"), (["1", "2", "1"], "classification"),
    (["a|b", "b"], "multilabel"), ([str(x / 7) for x in range(50)], "regression"),
])
def test_task_is_inferred_from_the_label_column(values, task):
    assert infer_task(pd.Series(values)) == task
