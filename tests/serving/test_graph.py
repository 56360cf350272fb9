"""The serving graph keeps every column (absent ones fully masked); training leaves such columns out.
Both must give the same outputs, for every fusion, or served answers would differ from `predict`."""
from __future__ import annotations

import pytest
import torch

from polyfuse.data.audio import AudioProcessor
from polyfuse.data.image import ImageProcessor
from polyfuse.config import Config
from polyfuse.data.text import TextProcessor
from polyfuse.model import PolyfuseModel
from polyfuse.serving.graph import FlatModel, flatten, output_names


@pytest.mark.parametrize("fusion", ["attention", "concat", "late"])
def test_all_columns_masked_equals_columns_left_out(fusion):
    cfg = Config.from_dict({
        "schema": {"text": ["caption"], "image": ["image"], "audio": ["audio"], "label": "label",
                   "task": "classification"},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "fusion": fusion, "dropout": 0.0},
        "text": {"max_length": 8}, "image": {"size": 16, "patch": 8}, "audio": {"n_mels": 8, "max_seconds": 0.2},
    })
    torch.manual_seed(0)
    model = PolyfuseModel(cfg, cfg.schema, 3, vocab_size=50).eval()
    B = 3
    text = {"ids": torch.randint(1, 50, (B, 5)), "mask": torch.tensor([[1, 1, 1, 0, 0]] * B, dtype=torch.bool),
            "modality": "text"}
    image = {"pixels": torch.randn(B, 3, 16, 16), "present": torch.tensor([True, False, True]), "modality": "image"}
    absent_audio = {"mel": torch.zeros(B, 8, 4), "mask": torch.zeros(B, 4, dtype=torch.bool), "modality": "audio"}
    with torch.no_grad():
        left_out = model({"inputs": {"caption": text, "image": image}})
        fields = {"text": TextProcessor.fields, "image": ImageProcessor.fields, "audio": AudioProcessor.fields}
        flat = FlatModel(model, fields)(*flatten({"caption": text, "image": image, "audio": absent_audio},
                                                 cfg.schema.streams(), fields))
    out = dict(zip(output_names(cfg.schema.streams()), flat))
    torch.testing.assert_close(out["probabilities"], left_out["logits"].softmax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pooled"], left_out["pooled"], atol=1e-5, rtol=0)
