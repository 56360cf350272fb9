import pytest
import torch

from polyfuse.data.labels import LabelCodec
from polyfuse.data.manifest import read_table
from polyfuse.data.processors import Processors
from polyfuse.inference import Predictor
from polyfuse.model import PolyfuseModel
from tests.conftest import tiny_config


def save_untrained_run(out, train_csv, seed=0, cfg=None):
    """A run folder with fitted processors and seeded random weights: enough to embed, no training."""
    cfg = cfg or tiny_config()
    table = read_table(train_csv)
    procs = Processors.build(cfg, cfg.schema).fit(table)
    labels = LabelCodec("classification").fit(table.df[cfg.schema.label])
    torch.manual_seed(seed)
    model = PolyfuseModel(cfg, cfg.schema, labels.n_outputs, procs.text.vocab_size).eval()
    Predictor(cfg, procs, labels, model).save(out)
    return out


@pytest.fixture(scope="session")
def run_dir(synth, tmp_path_factory):
    return save_untrained_run(tmp_path_factory.mktemp("run"), synth["train"])


@pytest.fixture(scope="session")
def other_run_dir(synth, tmp_path_factory):
    return save_untrained_run(tmp_path_factory.mktemp("run2"), synth["train"], seed=1)


def save_untrained_pretrained_run(out, train_csv, objectives=("contrastive", "mlm"), seed=0):
    """A `polyfuse pretrain` run folder (seeded random weights, contrastive heads included), no training."""
    from polyfuse.objectives import Pretrainer, build_objectives, resolve_objectives
    from polyfuse.runfolder import RunFolder, RunMeta
    cfg = resolve_objectives(tiny_config(pretrain={"objectives": list(objectives), "proj_dim": 24}))
    table = read_table(train_csv)
    procs = Processors.build(cfg, cfg.schema).fit(table)
    folder = RunFolder(out)
    folder.write_preprocessing(procs)
    torch.manual_seed(seed)
    model = PolyfuseModel(cfg, cfg.schema, 1, procs.text.vocab_size)
    pre = Pretrainer(model, build_objectives(cfg, model, procs)).eval()
    folder.write_model(pre.encoder_state(), RunMeta("pretrained", cfg, procs.text.vocab_size, None, {"epoch": 0}))
    return out, pre


@pytest.fixture(scope="session")
def pretrained_run(synth, tmp_path_factory):
    return save_untrained_pretrained_run(tmp_path_factory.mktemp("pre"), synth["train"])
