"""polyfuse pretrain end to end, then polyfuse train --init-from (and its architecture check)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from polyfuse.cli.main import main
from polyfuse.data.synthetic import write_splits

TINY = ["--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
        "--set", "text.vocab_size=200", "--set", "text.max_length=16", "--set", "image.size=16",
        "--set", "image.patch=8", "--set", "audio.n_mels=16", "--set", "audio.max_seconds=1.0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # a tiny model on a shared machine: one thread is faster
    folder = tmp_path_factory.mktemp("pre")
    paths = write_splits(folder / "data", n=48, seed=3)
    out = folder / "pre"
    rc = main(["pretrain", "--data", str(paths["train"]), "--image", "image", "--text", "caption",
               "--audio", "audio", "--objectives", "mlm,itm,contrastive,masked_patch", "--weights", "mlm=1,itm=0.5",
               "--epochs", "2", "--batch-size", "16", "--augment", "--out", str(out), "--quiet", *TINY])
    assert rc == 0
    yield paths, out
    torch.set_num_threads(threads)


def test_pretrain_writes_a_run_folder_with_each_objectives_loss(pretrained):
    paths, out = pretrained
    for name in ("config.json", "model.safetensors", "processors/tokenizer.json", "processors/audio.json",
                 "schema.json", "log.jsonl"):
        assert (out / name).exists(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "pretrained" and meta["config"]["pretrain"]["weights"] == {"mlm": 1.0, "itm": 0.5}
    assert meta["config"]["augment"]["enabled"] is True
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for key in ("train_loss", "mlm_loss", "itm_loss", "contrastive_loss", "masked_patch_loss",
                "contrastive_caption_image_loss", "masked_patch_audio_loss"):
        assert key in log[-1], key
    weights = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("head.") for k in weights)
    assert any(k.startswith("objectives.contrastive.") for k in weights)
    assert main(["info", str(out)]) == 2                       # not a predictor: a clear error, no traceback


def test_train_init_from_loads_encoders_and_tokenizer(pretrained, tmp_path, capsys):
    paths, pre = pretrained
    out = tmp_path / "ft"
    rc = main(["train", "--init-from", str(pre), "--train", str(paths["train"]), "--label", "label",
               "--image", "image", "--text", "caption", "--audio", "audio", "--epochs", "1", "--lr", "1e-9",
               "--out", str(out), "--quiet"])
    assert rc == 0
    assert "loaded" in capsys.readouterr().out
    assert (out / "processors" / "tokenizer.json").read_text() == (pre / "processors" / "tokenizer.json").read_text()
    before, after = load_file(str(pre / "model.safetensors")), load_file(str(out / "model.safetensors"))
    # lr 1e-9: the fine-tuned encoders are (almost exactly) the pretrained ones; the head is new.
    # (BatchNorm's running statistics, in the planned CNN image stem, move with any training.)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    shared = [k for k in before if k.startswith(("encoders.", "fusion.")) and not k.endswith(stats)]
    assert {"fusion.stack.blocks.0.qkv.weight", "encoders.text.tok.weight"} <= set(shared)
    assert any(k.startswith("encoders.image.patch") for k in shared)
    for k in shared:
        assert torch.allclose(before[k], after[k], atol=1e-6), k
    assert "head.fc.weight" in after


def test_init_from_another_architecture_is_an_error_unless_allow_partial(pretrained, tmp_path, capsys):
    paths, pre = pretrained
    args = ["train", "--init-from", str(pre), "--train", str(paths["train"]), "--label", "label",
            "--image", "image", "--audio", "audio", "--set", "model.n_layers=2", "--epochs", "1", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "fusion.stack.blocks.1.qkv.weight: in the model" in err            # a layer the checkpoint lacks
    assert "encoders.text.tok.weight: in the checkpoint" in err               # a tower this model lacks
    assert "--allow-partial" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--allow-partial"]) == 0
    printed = capsys.readouterr().out
    assert "--allow-partial: loaded" in printed and "fusion.stack.blocks.1.qkv.weight" in printed


def test_python_api_init_from_equals_the_cli(pretrained, tmp_path):
    """Polyfuse(init_from=...).fit starts from the pretrained encoders and tokenizer, like --init-from."""
    from polyfuse import Polyfuse
    paths, pre = pretrained
    est = Polyfuse(label="label", image="image", text="caption", audio="audio", epochs=1, lr=1e-9,
                   init_from=str(pre), out=str(tmp_path / "api")).fit(paths["train"])
    assert (tmp_path / "api" / "processors" / "tokenizer.json").read_text() == \
        (pre / "processors" / "tokenizer.json").read_text()
    before, after = load_file(str(pre / "model.safetensors")), load_file(str(tmp_path / "api" / "model.safetensors"))
    stats = ("running_mean", "running_var", "num_batches_tracked")     # BatchNorm statistics move
    for k in [k for k in before if k.startswith(("encoders.", "fusion.")) and not k.endswith(stats)]:
        assert torch.allclose(before[k], after[k], atol=1e-6), k
    assert est.build_config().model.d_model == 32            # the pretrained architecture, not the default
    assert est.score(paths["test"]) >= 0


def test_pretraining_holds_out_rows_and_keeps_the_epoch_with_the_lowest_held_out_loss(tmp_path, capsys):
    """Without --val, pretraining holds out train.val_fraction of the rows (as training does), and the
    run folder holds the epoch that retrieved the held-out rows' partners best (val_mrr), not the last one."""
    paths = write_splits(tmp_path / "data", n=300, seed=5, fractions=(1.0, 0.0, 0.0))
    out = tmp_path / "pre"
    # A tiny model on 270 rows: the held-out loss does not fall every epoch .
    rc = main(["pretrain", "--data", str(paths["train"]), "--image", "image", "--text", "caption",
               "--objectives", "contrastive", "--epochs", "5", "--batch-size", "32", "--lr", "3e-3",
               "--set", "train.patience=null", "--out", str(out), "--quiet", *TINY])
    assert rc == 0
    assert "held out 30 of 300 rows" in capsys.readouterr().out
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 5 and all("val_contrastive_loss" in r and 0 < r["val_mrr"] <= 1 for r in log)
    best = max(log, key=lambda r: r["val_mrr"])["epoch"]
    assert json.loads((out / "config.json").read_text())["info"]["epoch"] == best
    # The saved weights are the trainer's best copy (that epoch's), not the last epoch's.
    from polyfuse.runfolder import RunFolder
    saved = load_file(str(out / "model.safetensors"))
    kept = RunFolder(out).load_checkpoint()["best"]           # the Pretrainer's state: model.*, objectives.*
    last = RunFolder(out).load_checkpoint()["model"]
    for k, v in saved.items():
        assert torch.equal(v, kept[k if k.startswith("objectives.") else f"model.{k}"]), k
    if best != 5:       # the last epoch's weights differ from the kept ones
        assert not all(torch.equal(v, last[f"model.{k}"]) for k, v in saved.items() if not k.startswith("objectives."))


def test_held_out_mrr_is_one_for_perfect_pairs_and_low_for_shuffled_ones():
    """The retrieval score that ranks pretraining epochs: 1 when each row's partner is its nearest
    neighbour, about the chance level when the pairing is random; rows of one match group do not compete."""
    from polyfuse.recipes.pretrain import held_out_mrr

    class Con(torch.nn.Module):
        index, locked = {"a": "0", "b": "1"}, {}

        def column_vector(self, model, col, part):
            return part["v"], torch.ones(len(part["v"]), dtype=torch.bool)

    class Pre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.objectives, self.model = torch.nn.ModuleDict({"contrastive": Con()}), None

    class Rows(tuple):
        def __len__(self):
            return len(self[0])

    def collate(idx, rows):
        return {"inputs": {"a": {"v": rows[0][idx]}, "b": {"v": rows[1][idx]}}, "group": rows[2][idx]}

    def mrr(*rows):
        return held_out_mrr(Pre(), Rows(rows), collate, 16, "cpu")

    torch.manual_seed(0)
    x = torch.randn(40, 8)
    ones = torch.arange(40)
    assert mrr(x, x, ones) == pytest.approx(1.0)
    assert mrr(x, x[torch.randperm(40)], ones) < 0.3
    # Two rows per group, each with its partner's twin closer than itself: the twin is not a competitor.
    y = x.repeat_interleave(2, 0) + 0.01 * torch.randn(80, 8)
    pairs = torch.arange(80) // 2
    swapped = y.view(40, 2, 8).flip(1).reshape(80, 8)
    assert mrr(y, swapped, pairs) == pytest.approx(1.0)
    assert mrr(y, swapped, torch.arange(80)) < 0.6
