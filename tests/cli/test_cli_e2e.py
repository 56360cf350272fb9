"""The CLI end to end on tiny generated data: train -> evaluate -> predict -> info -> load."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

import polyfuse
from polyfuse.cli.main import main
from tests.conftest import tiny_config


def test_train_evaluate_predict_info_load(synth, tmp_path, capsys):
    cfg = tiny_config(train={"epochs": 2})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--train", str(synth["train"]),
                 "--val", str(synth["val"]), "--label", "label", "--text", "caption", "--image", "image",
                 "--audio", "audio", "--out", str(run), "--quiet"]) == 0
    assert "schema: text=['caption'] image=['image'] audio=['audio']" in capsys.readouterr().out

    assert main(["evaluate", str(run), "--data", str(synth["test"])]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "without_image" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc", "confusion_matrix"):
        assert key in metrics
    assert set(metrics["modality_ablation"]) >= {"without_text", "without_image", "without_audio"}
    for m, added in metrics["modality_contribution"].items():   # full accuracy less accuracy without m
        assert added == pytest.approx(metrics["accuracy"] - metrics["modality_ablation"][f"without_{m}"]["accuracy"],
                                      abs=1e-6)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n"]

    preds_path = tmp_path / "preds.csv"
    assert main(["predict", str(run), "--data", str(synth["test"]), "--out", str(preds_path)]) == 0
    assert "wrote 24 predictions" in capsys.readouterr().out
    preds = pd.read_csv(preds_path)
    test = pd.read_csv(synth["test"])
    assert len(preds) == len(test) and list(preds.columns[: len(test.columns)]) == list(test.columns)
    proba = preds[[f"proba_{c}" for c in range(4)]].to_numpy()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-4)
    assert (preds["prediction"].to_numpy() == proba.argmax(1)).all()

    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] > 0 and info["schema"]["task"] == "classification"

    # polyfuse.load gives the same predictions as the CLI.
    model = polyfuse.load(run)
    np.testing.assert_allclose(model.predict_proba(synth["test"]), proba, atol=1e-5)
    assert model.score(synth["test"]) == metrics["accuracy"]


def test_evaluate_refuses_an_unfinished_run_folder(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "labels.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "half"), "--data", "x.csv"]) == 2
    assert "not a finished Polyfuse run folder" in capsys.readouterr().err


def test_demo_command_parses_and_uses_its_defaults():
    from polyfuse.cli.main import build_parser
    args = build_parser().parse_args(["demo"])
    assert (args.rows, args.out) == (2000, "runs/demo")
