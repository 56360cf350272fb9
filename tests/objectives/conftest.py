import dataclasses

import pytest
import torch

from polyfuse.data.dataset import encode_table, make_collate
from polyfuse.data.manifest import read_table
from polyfuse.data.processors import Processors
from polyfuse.data.synthetic import make_dataset
from polyfuse.model import PolyfuseModel
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(cfg, processors, batch): 24 synthetic rows (some captions/audio missing), one batch."""
    folder = tmp_path_factory.mktemp("objectives")
    table = read_table(make_dataset(folder, n=24, seed=1, missing=0.2), folder)
    cfg = tiny_config(model={"dropout": 0.0})
    cfg = dataclasses.replace(cfg, schema=dataclasses.replace(cfg.schema, label=None))
    processors = Processors.build(cfg, cfg.schema).fit(table)
    data = encode_table(table, processors, None, progress=False)
    batch = make_collate(processors)(list(range(len(data))), data)
    return cfg, processors, batch


def make_model(cfg, processors, seed=0):
    torch.manual_seed(seed)
    return PolyfuseModel(cfg, cfg.schema, 1, processors.text.vocab_size)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two fighting over a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def matched(tmp_path_factory):
    """(cfg, processors, batch): 48 rows of caption + audio whose tone words name the tone heard, so
    whether a caption belongs with a clip can be told from content (half of random swaps can't:
    same tone), not only memorised."""
    folder = tmp_path_factory.mktemp("matched")
    table = read_table(make_dataset(folder, n=48, seed=2, missing=0.0, modalities=("text", "audio")), folder)
    cfg = tiny_config(model={"dropout": 0.0}, schema={"text": ["caption"], "image": [], "audio": ["audio"],
                                                       "label": None})
    processors = Processors.build(cfg, cfg.schema).fit(table)
    data = encode_table(table, processors, None, progress=False)
    batch = make_collate(processors)(list(range(len(data))), data)
    return cfg, processors, batch
