"""Untrained tiny run folders: evaluation, report and explain need a model, not a good one."""
import dataclasses
import functools
import json

import pytest
import torch

from tests.conftest import tiny_config
from polyfuse.data.labels import LabelCodec
from polyfuse.data.manifest import read_table, resolve_schema
from polyfuse.data.processors import Processors
from polyfuse.inference import Predictor
from polyfuse.model import PolyfuseModel


@functools.lru_cache(maxsize=4)
def _fitted(train_csv):
    """Schema, labels and processors do not depend on the fusion: fitted once per table."""
    cfg = tiny_config()
    table = read_table(train_csv)
    cfg = dataclasses.replace(cfg, schema=resolve_schema(table, cfg.schema)).validate()
    return cfg, table, LabelCodec(cfg.schema.task).fit(table.df[cfg.schema.label]), \
        Processors.build(cfg, cfg.schema).fit(table)


def make_run(folder, train_csv, fusion="attention", seed=0) -> Predictor:
    """A saved run folder with random weights and a two-epoch log.jsonl."""
    base, table, labels, processors = _fitted(train_csv)
    cfg = base.merged({"model": {"fusion": fusion}})
    torch.manual_seed(seed)
    model = PolyfuseModel(cfg, cfg.schema, labels.n_outputs, processors.text.vocab_size).eval()
    p = Predictor(cfg, processors, labels, model)
    p.save(folder, {"epoch": 2, "n_parameters": sum(x.numel() for x in model.parameters()), "train_rows": len(table)})
    with open(folder / "log.jsonl", "w") as f:
        for e, (tl, vl, va) in enumerate([(1.4, 1.3, 0.3), (1.2, 1.25, 0.35)], 1):
            f.write(json.dumps({"epoch": e, "train_loss": tl, "val_loss": vl, "val_accuracy": va,
                                "samples_per_s": 100.0, "elapsed_s": 1.5 * e}) + "\n")
    return p


@pytest.fixture(scope="session")
def run_dir(synth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    make_run(folder, synth["train"])
    return folder
