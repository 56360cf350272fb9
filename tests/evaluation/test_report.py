import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from polyfuse.cli.main import main
from polyfuse.evaluation.evaluate import evaluate
from polyfuse.evaluation.labelled import read_labelled
from polyfuse.evaluation.robustness import robustness_curves

from .conftest import make_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def report(run_dir, synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    # A test table with an empty group cell and a label the model never saw in training.
    df = pd.read_csv(synth["test"])
    df.loc[0, "shape"] = None
    df.loc[1, "label"] = 7
    df.to_csv(synth["test"].parent / "test_odd.csv", index=False)
    rc = main(["evaluate", str(run_dir), "--data", str(synth["test"].parent / "test_odd.csv"), "--out", str(out),
               "--report", "--group", "shape"])
    assert rc == 0
    return out


def test_metrics_json_has_groups_unseen_and_robustness(report):
    m = json.loads((report / "metrics.json").read_text())
    assert m["unseen_labels"] == [{"row": 1, "label": "7"}]
    assert m["n_unseen_label"] == 1
    g = m["groups"]
    assert g["column"] == "shape" and "(missing)" in g["groups"]
    assert sum(x["n"] for x in g["groups"].values()) == m["n"]
    accs = [x["accuracy"] for x in g["groups"].values()]
    assert g["largest_gap"]["gap"] == pytest.approx(max(accs) - min(accs))
    assert set(m["robustness"]) == {"metric", "text", "image", "audio"}


def test_report_is_self_contained(report):
    html = (report / "report.html").read_text()
    for section in ("Headline", "Confusion matrix", "ROC", "Training and validation", "Modality ablation",
                    "Robustness", "Slices by", "Most confidently wrong", "never seen in training"):
        assert section in html
    refs = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); "
                                             "the headless-browser check of report.html needs it")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--window-size=1280,2000", f"--screenshot={shot}", (report / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 10 and len(np.unique(img)) > 50      # text, charts and colour, not a blank page


def test_removing_an_unused_modality_changes_nothing(synth, tmp_path):
    # Concat fusion with the text slot's weights zeroed: the model cannot use text at all.
    p = make_run(tmp_path, synth["train"], fusion="concat")
    D = p.cfg.model.d_model
    i = [c for c, _ in p.schema.streams()].index("caption")
    p.model.fusion.mlp[0].weight.data[:, i * D:(i + 1) * D] = 0
    ld = read_labelled(p, synth["test"])
    full = p.predict(ld.data).outputs
    np.testing.assert_allclose(p.predict(ld.data, drop=("text",)).outputs, full, atol=1e-6)
    result = evaluate(p, ld.data, y=ld.y, outputs=full)
    without = result["modality_ablation"]["without_text"]
    for k, v in without.items():
        assert v == pytest.approx(result[k]), k
    curve = robustness_curves(p, ld.data, ld.y, result, strengths=(0.0, 0.5, 1.0))["text"]
    assert curve["values"] == pytest.approx([result["accuracy"]] * 3)
    # ...while removing a modality it does use changes its outputs.
    assert not np.allclose(p.predict(ld.data, drop=("image",)).outputs, full, atol=1e-6)


def test_bad_input_names_the_problem(run_dir, synth, tmp_path, capsys):
    df = pd.read_csv(synth["test"])
    df.drop(columns=["audio"]).to_csv(synth["test"].parent / "no_audio.csv", index=False)
    assert main(["evaluate", str(run_dir), "--data", str(synth["test"].parent / "no_audio.csv"),
                 "--out", str(tmp_path)]) == 2
    assert "column 'audio' is not in the table" in capsys.readouterr().err
    df.iloc[:0].to_csv(synth["test"].parent / "empty.csv", index=False)
    assert main(["evaluate", str(run_dir), "--data", str(synth["test"].parent / "empty.csv"),
                 "--out", str(tmp_path)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--data", str(synth["test"]), "--out", str(tmp_path),
                 "--group", "speaker"]) == 2
    assert "column 'speaker'" in capsys.readouterr().err


def test_compare_lists_runs(run_dir, synth, tmp_path, capsys):
    other = tmp_path / "late"
    make_run(other, synth["train"], fusion="late")
    assert main(["compare", str(run_dir), str(other), "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = pd.read_csv(tmp_path / "runs.csv")
    assert list(rows["fusion"]) == ["attention", "late"] and rows["params"].notna().all()
    assert "train_s" in capsys.readouterr().out
