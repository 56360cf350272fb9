"""ONNX export (checked against eager), int8 quantization, serving the exported folder, and pruning."""
from __future__ import annotations

import numpy as np
import pytest

from polyfuse.cli.main import main
from polyfuse.serving.backend import OnnxBackend, load_backend
from polyfuse.serving.export import sample_rows

from .conftest import as_json, client_for, files_of


@pytest.fixture(scope="module")
def exported(serve_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    assert main(["export", str(serve_run), "--format", "onnx", "--quantize", "int8", "--out", str(out)]) == 0
    return out


def test_export_parity_and_dynamic_axes(exported, eager, capsys):
    assert (exported / "model.onnx").exists() and (exported / "model.int8.onnx").exists()
    fp32, int8 = OnnxBackend(exported, "model.onnx"), OnnxBackend(exported, "model.int8.onnx")
    for n, seed in ((1, 10), (7, 11), (33, 12)):          # batch and lengths unlike the export example
        rows = sample_rows(eager, n, seed)
        want = eager.run(rows)
        got = fp32.run(rows)
        assert max(float(np.abs(want[k] - got[k]).max()) for k in want) <= 1e-4
        q = int8.run(rows)["probabilities"]
        assert q.shape == want["probabilities"].shape and np.abs(q - want["probabilities"]).max() < 0.1
    assert isinstance(load_backend(exported), OnnxBackend)       # serve DIR picks the int8 file
    assert load_backend(exported).name == "onnx:model.int8.onnx"


def test_threads_apply_to_preprocessing_with_onnx(exported):
    """--threads 1 must bound torch (log-mel) as well as ONNX Runtime: a spare OpenMP thread spinning
    beside the session made ONNX serving 10x slower on a busy machine."""
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        backend = load_backend(exported, threads=1)
        assert torch.get_num_threads() == 1
        assert backend.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.anyio
async def test_serving_the_exported_folder_answers_like_eager(exported, eager, serve_data):
    from polyfuse.serving.app import create_app
    rows = [as_json(files_of(serve_data["test"], i)) for i in range(4)]
    answers = []
    for backend in (eager, OnnxBackend(exported, "model.onnx")):
        async with client_for(create_app(backend)) as c:
            r = await c.post("/v1/predict", json=rows)
            assert r.status_code == 200, r.text
            answers.append([list(p["probabilities"].values()) for p in r.json()["predictions"]])
            assert r.json()["backend"] == backend.name
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-5)


def test_prune_cli(serve_run, serve_data, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(serve_run), "--amount", "0.3", "--finetune-epochs", "1", "--data",
                 str(serve_data["train"]), "--eval", str(serve_data["test"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy: before" in printed and "after 1 fine-tune epoch(s)" in printed
    from polyfuse.serving.prune import linear_layers, sparsity
    pruned = load_backend(out)
    assert sparsity(pruned.graph) >= 0.29
    # Every linear layer lost (about) 30% of its weights, not a few layers all of theirs.
    for m in linear_layers(pruned.graph):
        assert 0.25 <= float((m.weight == 0).float().mean()) <= 0.35
    assert main(["prune", str(serve_run), "--amount", "1.5", "--out", str(tmp_path / "bad")]) == 2
