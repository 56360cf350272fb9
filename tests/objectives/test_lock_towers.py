"""lock_towers (LiT): a frozen tower's column is embedded by the tower alone, the other columns learn to match it."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polyfuse.errors import ConfigError
from polyfuse.retrieval import Embedder
from polyfuse.recipes.pretrain import pretrain_run
from tests.conftest import tiny_config
from tests.encoders.conftest import write_bert


def _cfg(bert, freeze=True, **pretrain):
    return tiny_config(schema={"text": ["caption"], "image": ["image"], "audio": [], "label": None},
                       text={"encoder": str(bert)}, train={"epochs": 2},
                       model={"freeze_encoders": freeze, "feature_cache": False}, pretrain=pretrain)


def test_locked_text_is_the_towers_own_mean_pooled_vector(synth, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    torch.manual_seed(0)
    bert = write_bert(tmp_path / "bert")
    pretrain_run(_cfg(bert, objectives=["contrastive"], lock_towers=True), synth["train"], tmp_path / "pre", progress=False)
    weights = load_file(str(tmp_path / "pre" / "model.safetensors"))
    projections = {k.split(".")[3] for k in weights if k.startswith("objectives.contrastive.proj.")}
    assert projections == {"1"}                           # only the image column (index 1) learns one
    assert weights["objectives.contrastive.proj.1.2.weight"].shape[0] == 24   # into the tower's width

    emb = Embedder.load(tmp_path / "pre", device="cpu")
    assert emb.dim == 24
    texts = ["loud morning near the river", "quiet garden"]
    got = np.concatenate([emb.embed_query(t, "text")[1] for t in texts])
    tok, tower = AutoTokenizer.from_pretrained(str(bert)), AutoModel.from_pretrained(str(bert)).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        h = tower(**enc).last_hidden_state                                    # (B, T, H)
        m = enc["attention_mask"][..., None].float()
        want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert np.allclose(got, want, atol=1e-5)
    # The image side lands in the same 24-d space.
    image = emb.embed_table(synth["test"], names=["image"])[1]["image"]
    assert image.shape[1] == 24 and np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)


def test_lock_towers_needs_a_frozen_tower_and_the_contrastive_objective(synth, tmp_path):
    bert = write_bert(tmp_path / "bert")
    with pytest.raises(ConfigError, match="frozen pretrained tower"):
        pretrain_run(_cfg(bert, freeze=False, objectives=["contrastive"], lock_towers=True),
                     synth["train"], tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="add it to --objectives"):
        pretrain_run(_cfg(bert, objectives=["itm"], lock_towers=True), synth["train"],
                     tmp_path / "b", progress=False)


def test_lock_columns_names_which_frozen_columns_are_locked(synth, tmp_path):
    bert = write_bert(tmp_path / "bert")
    with pytest.raises(ConfigError, match="not columns of this run"):
        pretrain_run(_cfg(bert, objectives=["contrastive"], lock_towers=True, lock_columns=["nope"]),
                     synth["train"], tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="not read by a fully frozen"):     # the image column is a scratch CNN
        pretrain_run(_cfg(bert, objectives=["contrastive"], lock_towers=True, lock_columns=["image"]),
                     synth["train"], tmp_path / "b", progress=False)
    pretrain_run(_cfg(bert, objectives=["contrastive"], lock_towers=True, lock_columns=["caption"]),
                 synth["train"], tmp_path / "c", progress=False)
    weights = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert {k.split(".")[3] for k in weights if k.startswith("objectives.contrastive.proj.")} == {"1"}


def test_cli_lock_towers_takes_optional_columns():
    from polyfuse.cli.pretrain import lock_overrides
    assert lock_overrides(None) == {}
    assert lock_overrides("") == {"lock_towers": True, "lock_columns": None}
    assert lock_overrides("text, title") == {"lock_towers": True, "lock_columns": ["text", "title"]}


def test_pooled_columns_embed_a_tower_column_by_one_linear_map_of_its_mean_pooled_output(synth, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    torch.manual_seed(0)
    bert = write_bert(tmp_path / "bert")
    pretrain_run(_cfg(bert, objectives=["contrastive"], pooled_columns=["caption"]), synth["train"],
                 tmp_path / "pre", progress=False)
    weights = load_file(str(tmp_path / "pre" / "model.safetensors"))
    w, b = weights["objectives.contrastive.proj.0.weight"], weights["objectives.contrastive.proj.0.bias"]
    assert w.shape == (128, 24)                                # tower width 24 -> proj_dim, one Linear
    emb = Embedder.load(tmp_path / "pre", device="cpu")
    texts = ["loud morning near the river", "quiet garden"]
    got = np.concatenate([emb.embed_query(t, "text")[1] for t in texts])
    tok, tower = AutoTokenizer.from_pretrained(str(bert)), AutoModel.from_pretrained(str(bert)).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        h = tower(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        want = torch.nn.functional.normalize(((h * m).sum(1) / m.sum(1)) @ w.T + b, dim=-1).numpy()
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="not read by a pretrained tower"):
        pretrain_run(_cfg(bert, objectives=["contrastive"], pooled_columns=["image"]), synth["train"],
                     tmp_path / "b", progress=False)
