"""`polyfuse export --quantize int8` and serving the exported folder, for concat and late fusion and for
models of one, two and three modalities (attention with all three is test_export.py's model)."""
from __future__ import annotations

import base64

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from polyfuse.cli.main import main
from polyfuse.config import Config
from polyfuse.data.synthetic import write_splits
from polyfuse.serving.app import create_app
from polyfuse.serving.backend import EagerBackend, OnnxBackend, load_backend
from polyfuse.serving.export import sample_rows, untie_gemm_weights

from .conftest import client_for

COLUMN = {"text": "caption", "image": "image", "audio": "audio"}
CASES = [("concat", ("text",)), ("late", ("image", "audio")), ("concat", ("text", "image", "audio"))]


def train_tiny(folder, fusion: str, modalities: tuple, image: dict | None = None, model: dict | None = None,
               audio: dict | None = None) -> tuple:
    """A 1-epoch d=16 model of the given fusion on a synthetic table holding only these modalities."""
    from polyfuse.recipes.train import train_run
    data = write_splits(folder / "data", n=32, seed=5, modalities=modalities)
    cfg = Config.from_dict({
        "schema": {"label": "label", **{m: [COLUMN[m]] for m in modalities}},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "fusion": fusion, **(model or {})},
        "text": {"vocab_size": 100, "max_length": 16}, "image": {"size": 16, "patch": 8, **(image or {})},
        "audio": {"n_mels": 16, "max_seconds": 1.0, **(audio or {})},
        "train": {"epochs": 1, "batch_size": 16, "patience": None},
    })
    train_run(cfg, data["train"], None, folder / "run", progress=False)
    return folder / "run", data["test"]


def request_rows(table, modalities) -> list[dict]:
    df = pd.read_csv(table)
    rows = []
    for _, r in df.iterrows():
        row = {}
        for m in modalities:
            v = r[COLUMN[m]]
            if isinstance(v, str):
                row[COLUMN[m]] = v if m == "text" else base64.b64encode((table.parent / v).read_bytes()).decode()
        rows.append(row)
    return rows


def test_export_cnn_stem_with_batch_norm_and_max_pool(tmp_path, capsys):
    """A BatchNorm, max-pooling image stem exports with its running statistics (eval mode) and the
    exported model answers as eager PyTorch does on batches unlike the export example."""
    run, _ = train_tiny(tmp_path, "attention", ("image", "text"),
                        {"stem": "cnn", "stem_width": 4, "stem_norm": "batch", "stem_downsample": "max"})
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("max abs diff ")[1].split()[0]) <= 1e-4, printed
    eager, fp32 = EagerBackend(run), OnnxBackend(out, "model.onnx")
    assert any(n.op_type == "MaxPool" for n in onnx.load(str(out / "model.onnx")).graph.node)
    rows = sample_rows(eager, 7, seed=3)
    want, got = eager.run(rows), fp32.run(rows)
    assert max(float(np.abs(want[k] - got[k]).max()) for k in want) <= 1e-4


def test_export_audio_cnn_stem(tmp_path, capsys):
    """The 2-D audio stem (masked BatchNorm, max-pooling) exports with its running statistics, and
    the exported model answers as eager PyTorch does on clips of other lengths than the example's."""
    run, _ = train_tiny(tmp_path, "attention", ("audio", "text"), audio={"stem": "cnn", "stem_width": 4})
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("max abs diff ")[1].split()[0]) <= 1e-4, printed
    eager, fp32 = EagerBackend(run), OnnxBackend(out, "model.onnx")
    rows = sample_rows(eager, 7, seed=3)
    want, got = eager.run(rows), fp32.run(rows)
    assert max(float(np.abs(want[k] - got[k]).max()) for k in want) <= 1e-4


def test_export_balanced_ensemble(tmp_path, capsys):
    """A model trained with unimodal losses and OGM that predicts as an ensemble exports with the
    ensemble in its graph: the server gives the numbers the Python API does."""
    run, _ = train_tiny(tmp_path, "attention", ("text", "image", "audio"),
                        model={"aux_weight": 0.5, "ogm_alpha": 0.5, "ensemble": True, "modality_dropout": 0.3})
    from polyfuse.inference import Predictor
    fitted = Predictor.load(run)                      # weights as fit_ensemble leaves them: unequal
    fitted.model.ensemble_weights.copy_(torch.tensor([0.4, 2.1, 0.5, 1.0]))
    fitted.save_weights(run)
    assert Predictor.load(run).model.ensemble_weights.tolist() == pytest.approx([0.4, 2.1, 0.5, 1.0])
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    eager, fp32 = EagerBackend(run), OnnxBackend(out, "model.onnx")
    rows = sample_rows(eager, 7, seed=3)
    want, got = eager.run(rows), fp32.run(rows)
    assert max(float(np.abs(want[k] - got[k]).max()) for k in want) <= 1e-4


@pytest.mark.anyio
@pytest.mark.parametrize("fusion, modalities", CASES, ids=[f"{f}-{'+'.join(m)}" for f, m in CASES])
async def test_export_int8_and_serve(tmp_path, fusion, modalities, capsys):
    run, test_table = train_tiny(tmp_path, fusion, modalities)
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    diff = float(printed.split("max abs diff ")[1].split()[0])
    assert diff <= 1e-4, printed

    eager, fp32 = EagerBackend(run), OnnxBackend(out, "model.onnx")
    rows = sample_rows(eager, 9, seed=21)           # batch and lengths unlike the export example
    want, got = eager.run(rows), fp32.run(rows)
    assert max(float(np.abs(want[k] - got[k]).max()) for k in want) <= 1e-4

    served = load_backend(out)                      # what `polyfuse serve DIR` runs: the int8 file
    assert served.name == "onnx:model.int8.onnx"
    body = request_rows(test_table, modalities)
    answers = {}
    for backend in (eager, fp32, served):
        async with client_for(create_app(backend)) as c:
            r = await c.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            e = await c.post("/v1/embed", json=body[:2])
            assert e.status_code == 200 and len(e.json()["embeddings"]) == 2, e.text
            answers[backend.name] = np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]])
    assert answers["eager"].shape == (len(body), 4)
    np.testing.assert_allclose(answers["onnx:model.onnx"], answers["eager"], atol=1e-4)
    assert np.abs(answers["onnx:model.int8.onnx"] - answers["eager"]).max() < 0.15


def test_untie_gemm_weights_makes_a_shared_weight_quantizable(tmp_path):
    """Two Gemms (transB=1) on one weight, as late fusion's head on two columns: ONNX Runtime's
    quantizer transposes a Gemm weight in place per use, so the shared one loaded broken."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 8)).astype(np.float32), np.zeros(3, np.float32)
    nodes = [helper.make_node("Gemm", [x, "w", "b"], [y], transB=1) for x, y in (("x1", "y1"), ("x2", "y2"))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 8]) for x in ("x1", "x2")],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 3]) for y in ("y1", "y2")],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    assert untie_gemm_weights(model.graph) == 1
    assert len({n.input[1] for n in model.graph.node}) == 2
    onnx.save(model, str(tmp_path / "m.onnx"))
    quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    import onnxruntime as ort
    x = rng.normal(size=(4, 8)).astype(np.float32)
    y1, y2 = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x1": x, "x2": 2 * x})
    np.testing.assert_allclose(y1, x @ w.T, atol=0.1)
    np.testing.assert_allclose(y2, 2 * x @ w.T, atol=0.2)
