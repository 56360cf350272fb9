"""ONNX export of the whole model (dynamic batch and sequence axes), checked against eager PyTorch,
and optional int8 dynamic quantization of its linear layers with ONNX Runtime.

The exported folder holds model.onnx (and model.int8.onnx), plus the run's config, processors and
labels, so `polyfuse serve` reads requests exactly as the run folder would.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import is_tower
from ..errors import PolyfuseError
from ..runfolder import RunFolder
from .backend import EagerBackend, OnnxBackend

PARITY_TOLERANCE = 1e-4      # max abs difference of every output, ONNX fp32 vs eager


def dynamic_shapes(backend: EagerBackend) -> tuple:
    """Batch is dynamic everywhere; text length and audio frames (whole tokens) per column."""
    from torch.export import Dim
    cfg = backend.cfg
    batch = Dim("batch", min=1, max=4096)
    k = cfg.audio.frames_per_token
    shapes = []
    for col, m in backend.streams:
        if m == "text":
            length = Dim(f"{col}_tokens", min=1, max=cfg.text.max_length)
            shapes += [{0: batch, 1: length}, {0: batch, 1: length}]
        elif m == "image":
            shapes += [{0: batch}, {0: batch}]
        else:
            tokens = Dim(f"{col}_tokens", min=1, max=cfg.audio.max_frames // k)
            shapes += [{0: batch, 2: k * tokens}, {0: batch, 1: k * tokens}]
    return (tuple(shapes),)      # FlatModel.forward takes *flat: one entry for the varargs


def sample_rows(backend, n: int, seed: int, min_tokens: int = 1) -> list[dict]:
    """n processed rows of random content, with varying lengths and some modalities absent."""
    g = torch.Generator().manual_seed(seed)
    cfg, rows = backend.cfg, []
    vocab = backend.processors.text.vocab_size if backend.processors.text else 0
    k = cfg.audio.frames_per_token
    for i in range(n):
        row = {}
        for j, (col, m) in enumerate(backend.streams):
            if len(backend.streams) > 1 and (i + j) % 3 == 2:
                continue          # absent cell
            if m == "text":
                t = int(torch.randint(min_tokens, cfg.text.max_length + 1, (1,), generator=g))
                row[col] = {"ids": torch.randint(5, max(6, vocab), (t,), generator=g)}
            elif m == "image":
                row[col] = {"pixels": torch.randn(3, cfg.image.size, cfg.image.size, generator=g)}
            else:
                f = k * int(torch.randint(min_tokens, cfg.audio.max_frames // k + 1, (1,), generator=g))
                row[col] = {"mel": torch.randn(cfg.audio.n_mels, f, generator=g)}
        rows.append(row)
    return rows


def untie_gemm_weights(graph) -> int:
    """Give every Gemm its own copy of a weight it shares with another node; returns the copies made.

    ONNX Runtime's quantizer rewrites Gemm(transB=1) as MatMul by transposing the weight initializer
    in place, assuming no other node uses it. Late fusion scores every column with the one task head
    (one Gemm per column, one weight), so a shared weight was transposed once per use and came out
    wrong whenever the use count was even (two columns: an int8 model that failed to load).
    """
    from onnx import numpy_helper
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    copies = 0
    for node in graph.node:
        w = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else None
        if w in inits and users[w] > 1:
            users[w] -= 1
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[w]), f"{w}.{node.name or copies}")
            graph.initializer.append(copy)
            node.input[1] = copy.name
            copies += 1
    return copies


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def export_onnx(run_dir: str | Path, out_dir: str | Path, quantize: str | None = None, say=print) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    eager = EagerBackend(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    towers = [m for m in eager.processors.by_modality if is_tower(getattr(eager.cfg, m).encoder)]
    if towers:
        raise PolyfuseError(f"{run_dir}: ONNX export covers Polyfuse's own encoders; this run has a pretrained "
                            f"{', '.join(towers)} tower. Serve the run folder itself (`polyfuse serve {run_dir}`)")
    dest = RunFolder(out_dir)
    RunFolder(run_dir).export_to(dest, {"onnx": ["model.onnx"] + (["model.int8.onnx"] if quantize else [])})
    # Every dynamic size >= 2 in the example: torch.export specializes sizes of 0 and 1.
    example = eager.collate(sample_rows(eager, 2, seed=0, min_tokens=2))
    t0 = time.perf_counter()
    torch.onnx.export(eager.graph, tuple(example), str(out_dir / "model.onnx"),
                      dynamo=True, dynamic_shapes=dynamic_shapes(eager), input_names=eager.inputs,
                      output_names=eager.outputs, optimize=True, verbose=False)
    report = {"export_seconds": round(time.perf_counter() - t0, 1), "files": ["model.onnx"]}

    # Parity on batches of other sizes and lengths than the export example: the axes really are dynamic.
    checks = [sample_rows(eager, n, seed) for n, seed in ((1, 1), (5, 2), (16, 3))]
    fp32 = OnnxBackend(out_dir, "model.onnx")
    diff = max(max_abs_diff(eager.run(rows), fp32.run(rows)) for rows in checks)
    report["parity_max_abs_diff"] = diff
    say(f"ONNX fp32 vs eager PyTorch: max abs diff {diff:.2e} over {sum(map(len, checks))} sample rows "
        f"(tolerance {PARITY_TOLERANCE:g})")
    if not diff <= PARITY_TOLERANCE:
        raise PolyfuseError(f"exported model differs from eager PyTorch by {diff:.2e} > {PARITY_TOLERANCE:g}")

    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        import onnx
        # The exporter's intermediate shape annotations can disagree with ONNX's own shape inference,
        # which the quantizer reruns; drop them and let it infer afresh.
        model = onnx.load(str(out_dir / "model.onnx"))
        del model.graph.value_info[:]
        untie_gemm_weights(model.graph)
        stripped = out_dir / "model.noshapes.onnx"
        onnx.save(model, str(stripped))
        try:
            quantize_dynamic(str(stripped), str(out_dir / "model.int8.onnx"),
                             op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        finally:
            stripped.unlink(missing_ok=True)
        int8 = OnnxBackend(out_dir, "model.int8.onnx")
        qdiff = max(float(np.abs(eager.run(r)["probabilities"] - int8.run(r)["probabilities"]).max()) for r in checks)
        report["files"].append("model.int8.onnx")
        report["int8_probability_max_abs_diff"] = qdiff
        say(f"ONNX int8 vs eager PyTorch: max abs diff of probabilities {qdiff:.2e} (quantization error, "
            "no tolerance; measure accuracy with bench/infer.py)")
    elif quantize is not None:
        raise PolyfuseError(f"unknown --quantize {quantize!r}; supported: int8")
    dest.write_json("export.json", {**report, "source": str(run_dir)})
    return report
