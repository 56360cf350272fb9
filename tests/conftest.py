import atexit
import os
import shutil
import tempfile

import pytest

from polyfuse.config import Config
from polyfuse.data.synthetic import write_splits

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny configs' decode cache: one per test session, never the user's ~/.cache.
DECODE_CACHE = tempfile.mkdtemp(prefix="polyfuse-decoded-")
atexit.register(shutil.rmtree, DECODE_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small synthetic table of captions, PNG images and WAV tones: train/val/test CSV paths."""
    return write_splits(tmp_path_factory.mktemp("synth"), n=160, seed=0)


def tiny_config(**sections) -> Config:
    """The smallest model that still exercises every part; sections override, e.g. train={"epochs": 1}."""
    base = {
        "schema": {"text": ["caption"], "image": ["image"], "audio": ["audio"], "label": "label"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.1},
        "text": {"vocab_size": 200, "max_length": 16},
        "image": {"size": 16, "patch": 8},
        "audio": {"n_mels": 16, "max_seconds": 1.0},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "patience": None},
        "data": {"cache_dir": DECODE_CACHE},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return Config.from_dict(base)


@pytest.fixture
def cfg():
    return tiny_config()
