"""Tiny random Hugging Face towers written to temporary folders (no hub access), and their data."""
from __future__ import annotations

import numpy as np
import pytest

WORDS = ("quiet calm soft gentle loud bright sharp lively morning street garden kitchen station river "
         "market forest office harbour near the old new little big in a by green red window today").split()


def write_bert(folder):
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz") \
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##ing", "##er", "##ly"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    return folder


def write_vit(folder):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=24, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=32)
    ViTModel(cfg).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(str(folder))
    return folder


def write_wav2vec2(folder):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    cfg = Wav2Vec2Config(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                         do_stable_layer_norm=True)
    Wav2Vec2Model(cfg).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def towers(tmp_path_factory):
    import torch
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("towers")
    return {"text": write_bert(root / "bert"), "image": write_vit(root / "vit"),
            "audio": write_wav2vec2(root / "w2v")}


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    from polyfuse.data.synthetic import write_splits
    return write_splits(tmp_path_factory.mktemp("tsynth"), n=48, seed=1)


def rng_text(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(n)]
