"""The one interface the server runs a model through: eager PyTorch or ONNX Runtime.

Both take the same decoded rows, collate every input column (see graph.py) and return the graph's
outputs, so decoding, batching and the response format are one code path whichever runs the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.labels import LabelCodec
from ..data.processors import Processors
from ..errors import PolyfuseError
from ..runfolder import RunFolder
from .graph import FlatModel, fields_of, flatten, input_names, output_names

ONNX_FILES = ("model.int8.onnx", "model.onnx")   # what `polyfuse serve DIR` looks for, in this order


class Backend:
    """cfg, processors, labels, streams; run(rows) -> {output name: (B, ...) array}."""
    name = "base"
    routes = ("predict", "embed")       # what the server offers for it (a generation run: serving/generate.py)

    def __init__(self, cfg: Config, processors: Processors, labels: LabelCodec):
        self.cfg, self.processors, self.labels = cfg, processors, labels
        self.streams = cfg.schema.streams()
        self.fields = fields_of(processors)
        self.inputs, self.outputs = input_names(self.streams, self.fields), output_names(self.streams)

    def collate(self, rows: list[dict]) -> list[torch.Tensor]:
        """rows: [{column: processed item or None}] -> flat tensors; every column, even if absent everywhere."""
        parts = {c: self.processors.by_modality[m].collate([r.get(c) for r in rows]) for c, m in self.streams}
        return flatten(parts, self.streams, self.fields)

    def run(self, rows: list[dict]) -> dict[str, np.ndarray]:
        out = dict(zip(self.outputs, self.forward(self.collate(rows))))
        n = {len(v) for v in out.values()}
        assert n == {len(rows)}, f"model returned {n} rows for {len(rows)}"
        return out

    def forward(self, flat: list[torch.Tensor]) -> list[np.ndarray]:
        raise NotImplementedError

    def warm_up(self):
        """One tiny batch before reporting ready, so the first real request does not pay for lazy init."""
        self.run([{}])

    def describe(self) -> dict:
        return {"backend": self.name, "task": self.labels.task, "classes": self.labels.classes,
                "columns": {c: m for c, m in self.streams}}


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, run_dir: str | Path):
        from ..inference import Predictor
        p = Predictor.load(run_dir, "cpu")
        super().__init__(p.cfg, p.processors, p.labels)
        self.graph = FlatModel(p.model, self.fields).eval()

    @torch.inference_mode()
    def forward(self, flat):
        return [t.float().numpy() for t in self.graph(*flat)]


class OnnxBackend(Backend):
    def __init__(self, folder: str | Path, file: str | None = None, threads: int | None = None):
        import onnxruntime as ort
        folder = Path(folder)
        cfg, processors, labels = load_preprocessing(folder)
        super().__init__(cfg, processors, labels)
        file = file or next(f for f in ONNX_FILES if (folder / f).exists())
        self.name = f"onnx:{file}"
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / file), opts, providers=["CPUExecutionProvider"])
        self.feed_names = [i.name for i in self.session.get_inputs()]
        if self.feed_names != self.inputs:
            raise PolyfuseError(f"{folder / file} takes {self.feed_names}, the run's schema needs {self.inputs}")

    def forward(self, flat):
        return self.session.run(self.outputs, {n: t.numpy() for n, t in zip(self.inputs, flat)})


def load_preprocessing(folder: Path) -> tuple[Config, Processors, LabelCodec]:
    """Config, processors and labels of a run folder or an exported folder (no weights needed)."""
    run = RunFolder(folder)
    cfg = run.require("supervised", "exported", purpose="serving").config
    return cfg, run.processors(cfg), run.labels()


def load_backend(folder: str | Path, onnx_file: str | None = None, threads: int | None = None):
    """An exported folder (model*.onnx) runs on ONNX Runtime; a run folder (model.safetensors) eagerly;
    a generation run through its decoder (serving/generate.py)."""
    folder = Path(folder)
    if threads:
        # Preprocessing (log-mel) runs on torch with either backend: an extra OpenMP thread spinning
        # beside ONNX Runtime on a busy machine made ONNX serving 10x slower (37 vs 345 rows/s).
        torch.set_num_threads(threads)
    run = RunFolder(folder)
    if run.is_finished() and run.kind == "generation":
        if onnx_file:
            raise PolyfuseError(f"{folder} is a generation run: it is served eagerly (ONNX export does not cover "
                                "generation runs), so --onnx-file does not apply")
        from .generate import GenerationBackend
        return GenerationBackend(folder)
    if onnx_file or any((folder / f).exists() for f in ONNX_FILES):
        return OnnxBackend(folder, onnx_file, threads)
    return EagerBackend(folder)
