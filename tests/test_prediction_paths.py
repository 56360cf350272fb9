"""One prediction path: for classification, multi-label and regression, the Python API, `polyfuse
predict`, the server's /v1/predict and the values `polyfuse evaluate` scores agree on the same rows,
in label units (a regression target around 1,000 is predicted around 1,000, not re-scaled twice)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from polyfuse import load
from polyfuse.cli.main import main
from polyfuse.data.synthetic import make_dataset
from polyfuse.evaluation.metrics import regression_metrics
from polyfuse.recipes.train import train_run
from polyfuse.serving.app import create_app
from polyfuse.serving.backend import EagerBackend
from tests.conftest import tiny_config
from tests.serving.conftest import client_for

LABEL = {"classification": "label", "multilabel": "tags", "regression": "y"}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paths")
    df = make_dataset(folder, n=96, seed=5, modalities=("text",))
    df["y"] = 1000.0 + 100.0 * df["score"]           # far from 0 and 1: a wrong scale cannot hide
    df[:72].to_csv(folder / "train.csv", index=False)
    df[72:].to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


@pytest.fixture(scope="module", params=["classification", "multilabel", "regression"])
def run(request, tables, tmp_path_factory):
    task = request.param
    cfg = tiny_config(schema={"text": ["caption"], "image": [], "audio": [], "label": LABEL[task], "task": task},
                      train={"epochs": 3, "lr": 3e-3})
    out = tmp_path_factory.mktemp(task) / "run"
    train_run(cfg, tables[0], None, out, progress=False)
    return task, out


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_api_cli_server_and_evaluate_agree_in_label_units(run, tables, tmp_path):
    task, out = run
    test = pd.read_csv(tables[1])
    model = load(out)
    api = model.predict(test)

    assert main(["predict", str(out), "--data", str(tables[1]), "--out", str(tmp_path / "p.csv")]) == 0
    cli = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)

    async with client_for(create_app(EagerBackend(out))) as c:
        r = await c.post("/v1/predict", json=[{"caption": t} for t in test["caption"]])
        assert r.status_code == 200, r.text
        served = r.json()["predictions"]

    assert main(["evaluate", str(out), "--data", str(tables[1]), "--out", str(tmp_path / "m.json"),
                 "--no-ablation"]) == 0
    evaluated = json.loads((tmp_path / "m.json").read_text())

    if task == "regression":
        y = test["y"].to_numpy(float)
        cli_values, server_values = cli["prediction"].to_numpy(float), np.array([p["prediction"] for p in served])
        np.testing.assert_allclose(cli_values, api, rtol=1e-6)
        np.testing.assert_allclose(server_values, api, rtol=1e-5)
        # Label units: the predictions live where the labels do (mean 1,000 + 100 * score).
        assert abs(api.mean() - y.mean()) < 3 * y.std() and api.std() < 10 * y.std()
        for name, value in regression_metrics(y, api).items():
            assert evaluated[name] == pytest.approx(value, rel=1e-5), name
        return

    proba = model.predict_proba(test)
    classes = list(model.classes_)
    assert list(cli["prediction"].astype(str)) == list(api) == [p["prediction"] for p in served]
    np.testing.assert_allclose(cli[[f"proba_{c}" for c in classes]].to_numpy(float), proba, atol=2e-6)
    np.testing.assert_allclose([[p["probabilities"][c] for c in classes] for p in served], proba, atol=2e-6)
    if task == "classification":
        truth = test["label"].astype(str).to_numpy()
        assert evaluated["accuracy"] == pytest.approx(float((api.astype(str) == truth).mean()))
    else:
        truth = [set(t.split("|")) for t in test["tags"]]
        got = [set(p.split("|")) - {""} for p in api]
        assert evaluated["subset_accuracy"] == pytest.approx(float(np.mean([a == b for a, b in zip(got, truth)])))
    assert model.score(test) == pytest.approx(evaluated[{"classification": "accuracy",
                                                         "multilabel": "micro_f1"}[task]])
