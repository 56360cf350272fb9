import json

import numpy as np
import pytest

from polyfuse.cli.main import main
from polyfuse.evaluation.explain import explain_row, to_input_shape

from .conftest import make_run


@pytest.mark.parametrize("fusion", ["attention", "concat", "late"])
def test_explain_each_modality_maps_onto_the_input(synth, tmp_path, fusion):
    p = make_run(tmp_path / "run", synth["train"], fusion=fusion)
    data = p.encode(p.read(synth["test"]))
    r = explain_row(p, data, 0)
    item = data.inputs[0]
    assert {c["modality"] for c in r["columns"].values()} == {"text", "image", "audio"}
    for col, a in r["columns"].items():
        for method in ("grad_x_input", "rollout"):
            heat = to_input_shape(p, a["modality"], a[method], item[col])
            if a["modality"] == "image":
                assert heat.shape == item[col]["pixels"].shape[1:]          # (S, S)
            elif a["modality"] == "audio":
                assert heat.shape == item[col]["mel"].shape[1:]             # (F,) frames
            else:
                assert heat.shape == item[col]["ids"].shape                 # (T,) tokens
            assert np.isfinite(heat).all() and np.abs(heat).sum() > 0
    for method in ("grad_x_input", "rollout"):
        assert sum(r["share"][method].values()) == pytest.approx(1.0)


def test_explain_cli_writes_pngs_and_one_page(run_dir, synth, tmp_path):
    rows = synth["test"].parent / "rows.csv"
    rows.write_text("".join(synth["test"].read_text().splitlines(True)[:3]))
    out = tmp_path / "explain"
    assert main(["explain", str(run_dir), "--data", str(rows), "--out", str(out)]) == 0
    pngs = sorted(x.name for x in out.glob("*.png"))
    assert {"row0_image.png", "row0_audio.png", "row1_image.png"} <= set(pngs)
    html = (out / "index.html").read_text()
    assert all(name in html for name in pngs)
    saved = json.loads((out / "attributions.json").read_text())
    assert len(saved) == 2 and set(saved[0]["share"]["grad_x_input"]) <= {"text", "image", "audio"}
