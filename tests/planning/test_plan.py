"""The plan follows the data, leaves what the user set alone, and is saved with the run."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.cli.main import main
from polyfuse.config import Config, SchemaConfig
from polyfuse.data.manifest import read_table
from polyfuse.planning import apply_plan, format_plan, holdout, make_plan, profile_table
from polyfuse.planning.split import find_group


def _table(folder, n=60, image_wh=(40, 40), rate=11025, seconds=1.5, grey=False, words=5):
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        px = rng.integers(0, 255, size=(image_wh[1], image_wh[0]) + (() if grey else (3,)), dtype=np.uint8)
        Image.fromarray(px).save(folder / f"img/{i}.png")
        sf.write(folder / f"wav/{i}.wav", rng.normal(0, 0.1, int(rate * seconds)).astype(np.float32), rate)
        rows.append({"image": f"img/{i}.png", "audio": f"wav/{i}.wav", "text": " ".join(["w%d" % j for j in range(words)]),
                     "label": i % 3, "speaker": f"s{i % 6}"})
    pd.DataFrame(rows).to_csv(folder / "t.csv", index=False)
    return folder / "t.csv"


SCHEMA = SchemaConfig(image=["image"], audio=["audio"], text=["text"], label="label", task="classification")


def _plan(path, **kw):
    table = read_table(path)
    cfg = Config.from_dict({"schema": vars(SCHEMA)})
    return make_plan(profile_table(table, SCHEMA), cfg, len(table), **kw), cfg


def test_processor_settings_follow_the_data(tmp_path):
    small, _ = _plan(_table(tmp_path / "a", image_wh=(24, 24), rate=8000, seconds=0.5, words=4))
    big, _ = _plan(_table(tmp_path / "b", image_wh=(160, 100), rate=22050, seconds=4.0, words=60))
    s, b = small.settings, big.settings
    assert s["image"]["size"] == 24 and s["image"]["resize"] == "squash"
    assert b["image"]["size"] == 64 and b["image"]["resize"] == "pad"       # capped; 1.6:1 images padded
    assert s["image"]["size"] % s["image"]["patch"] == 0 and b["image"]["size"] % b["image"]["patch"] == 0
    assert s["audio"]["sample_rate"] == 8000 and b["audio"]["sample_rate"] == 16000
    assert s["audio"]["max_seconds"] == pytest.approx(0.5, abs=0.01)
    assert b["audio"]["max_seconds"] == pytest.approx(4.0, abs=0.01)
    # Longer clips get more frames per token, so the token count stays bounded.
    assert b["audio"]["frames_per_token"] > s["audio"]["frames_per_token"]
    assert b["text"]["max_length"] > s["text"]["max_length"]
    assert 0.3 < s["image"]["mean"][0] < 0.7                                    # uniform noise pixels
    cfg_none = Config.from_dict({"schema": vars(SCHEMA), "train": {"group_by": "none"}})
    table = read_table(tmp_path / "a" / "t.csv")
    rowwise = make_plan(profile_table(table, SCHEMA), cfg_none, len(table))
    assert any("--group-by speaker" in n for n in rowwise.notes)                # 6 speakers over 60 rows


def test_user_values_win_and_are_marked(tmp_path):
    plan, cfg = _plan(_table(tmp_path, image_wh=(24, 24)))
    cfg = cfg.merged({"image": {"size": 48, "patch": 8}})
    planned, source = apply_plan(cfg, plan, {"image.size", "image.patch"})
    assert planned.image.size == 48 and planned.image.patch == 8
    assert planned.audio.sample_rate == plan.settings["audio"]["sample_rate"]
    table = format_plan(plan, planned, source)
    assert "image.size" in table and "set by you" in table
    # A named size fixes the width and depth it defines.
    sized, _ = apply_plan(cfg.merged({"model": {"size": "small"}}), plan, {"model.size"})
    assert sized.model.d_model == 128


def test_budget_and_presets(tmp_path):
    path = _table(tmp_path)
    timed, _ = _plan(path, max_minutes=5)
    assert timed.settings["train"]["fill_budget"] is True and timed.settings["train"]["max_minutes"] == 5
    assert "epochs" not in timed.settings["train"]
    fast, _ = _plan(path, preset="fast")
    assert fast.settings["train"]["max_minutes"] == 3 and fast.settings["augment"]["enabled"] is False
    untimed, _ = _plan(path)
    assert "max_minutes" not in untimed.settings["train"] and untimed.settings["train"]["epochs"] >= 10
    assert untimed.settings["model"]["modality_dropout"] > 0 and untimed.settings["model"]["aux_weight"] > 0


def test_holdout_keeps_groups_and_shared_files_apart(tmp_path):
    df = pd.DataFrame({"image": [f"i{i}.png" for i in range(300)], "audio": [f"a{i % 100}.wav" for i in range(300)],
                       "label": [i % 4 for i in range(300)], "speaker": [f"s{i % 7}" for i in range(300)]})
    table = read_table(df, tmp_path)
    schema = SchemaConfig(image=["image"], audio=["audio"], label="label", task="classification")
    tr, va, said = holdout(table, schema, 0.1, "speaker", seed=0)
    assert not set(tr.df.speaker) & set(va.df.speaker) and len(tr) + len(va) == 300
    assert "speaker" in said
    assert f"{tr.df.speaker.nunique()} of 7 groups train" in said and "--val-fraction 0" in said
    many = read_table(df.assign(speaker=[f"s{i % 40}" for i in range(300)]), tmp_path)
    _, _, said = holdout(many, schema, 0.1, "speaker", seed=0)
    assert "speaker" in said and "--val-fraction 0" not in said     # 36 voices train: one more is little
    tr, va, said = holdout(table, schema, 0.1, "none", seed=0)
    assert not set(tr.df.audio) & set(va.df.audio), "rows sharing a file must stay on one side"
    assert set(va.df.label) == {0, 1, 2, 3} and "audio" in said
    tr, va, _ = holdout(read_table(df[:100], tmp_path), schema, 0.1, "auto", seed=0)
    assert va is None and len(tr) == 100          # 10 rows are too few to validate on


def test_auto_holdout_finds_the_group_column(tmp_path):
    """'auto' holds out whole speakers; not a column that names the class again, nor one with so few
    values that a whole group is far more than the asked share."""
    n = 300
    df = pd.DataFrame({"image": [f"i{i}.png" for i in range(n)], "label": [i % 4 for i in range(n)],
                       "speaker": [f"s{(i // 4) % 7}" for i in range(n)],             # every class in each
                       "kind": [f"k{i % 4}" for i in range(n)],                       # = the label
                       "site": [f"x{i % 3}" for i in range(n)],                       # 3 groups: too few
                       "take": [f"t{i % 4}-{i // 60}" for i in range(n)]})          # 20 groups, one class each
    schema = SchemaConfig(image=["image"], label="label", task="classification")
    table = read_table(df, tmp_path)
    assert find_group(table, schema, 0.1)[0] == "speaker"
    tr, va, said = holdout(table, schema, 0.1, "auto", seed=0)
    assert not set(tr.df.speaker) & set(va.df.speaker) and "'speaker'" in said and "--group-by none" in said
    assert set(va.df.label) == {0, 1, 2, 3}
    assert find_group(read_table(df.drop(columns="speaker"), tmp_path), schema, 0.1) is None
    tr, va, said = holdout(table, schema, 0.1, "none", seed=0)
    assert set(tr.df.speaker) == set(va.df.speaker) and "speaker" not in said
    regression = SchemaConfig(image=["image"], label="label", task="regression")
    assert find_group(table, regression, 0.1)[0] == "take"        # no classes to cut across: the finest


def test_plan_command_and_saved_plan(tmp_path, capsys):
    path = _table(tmp_path, n=80, image_wh=(20, 20), rate=8000, seconds=0.4)
    base = ["--train", str(path), "--label", "label", "--image", "image", "--audio", "audio", "--text", "text"]
    assert main(["plan", *base, "--set", "image.size=16"]) == 0
    out = capsys.readouterr().out
    assert "audio.sample_rate" in out and "set by you" in out
    run = tmp_path / "run"
    assert main(["train", *base, "--epochs", "1", "--quiet", "--out", str(run), "--set", "model.d_model=32"]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["source"]["model.d_model"] == "yours" and plan["source"]["audio.sample_rate"] == "plan"
    assert plan["outcome"]["epochs"] == 1 and plan["outcome"]["stopped"] == "all_epochs"
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["model"]["d_model"] == 32 and saved["audio"]["sample_rate"] == 8000
    assert saved["image"]["size"] == 20


def test_training_without_val_holds_out_groups(tmp_path):
    from polyfuse.data.synthetic import make_dataset
    from polyfuse.recipes.train import train_run
    from tests.conftest import tiny_config
    df = make_dataset(tmp_path, n=240, seed=1, modalities=("text", "image"), image_size=16)
    df["writer"] = [f"w{i % 8}" for i in range(len(df))]
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = tiny_config(schema={"audio": []}, train={"epochs": 1, "group_by": "writer"})
    _, summary = train_run(cfg, tmp_path / "t.csv", None, tmp_path / "run", progress=False,
                           fixed={"train.epochs", "model.d_model", "model.n_layers", "model.n_heads"})
    assert summary["val_metrics"]["split"] == "validation"
    assert 20 <= summary["val_metrics"]["n"] < 240
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert "val_accuracy" in log and "aux_image_loss" in log            # balanced: text + image
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert "writer" in plan["validation"] and plan["outcome"]["stopped"] == "all_epochs"


def test_a_pretrained_tower_is_frozen_and_keeps_its_own_preprocessing(tmp_path):
    path = _table(tmp_path, seconds=1.2)
    table = read_table(path)
    cfg = Config.from_dict({"schema": vars(SCHEMA), "audio": {"encoder": str(tmp_path / "some_tower")}})
    plan = make_plan(profile_table(table, SCHEMA), cfg, len(table))
    assert plan.settings["model"]["freeze_encoders"] is True and "unfreeze_top_k" not in plan.settings["model"]
    assert plan.settings["audio"]["max_seconds"] == pytest.approx(1.2, abs=0.01)     # clip length from the data
    assert "sample_rate" not in plan.settings["audio"] and "n_mels" not in plan.settings["audio"]  # the tower's own
    best = make_plan(profile_table(table, SCHEMA), cfg, len(table), preset="best")
    assert best.settings["model"]["unfreeze_top_k"] == 1


def test_a_transcript_target_gets_no_crops_or_shifts_of_its_audio(tmp_path):
    """The target of a generation run follows the clip in order; a label does not."""
    import dataclasses
    path = _table(tmp_path)
    table = read_table(path)
    gen_schema = dataclasses.replace(SCHEMA, task="generation", label="text", text=[])
    cfg = Config.from_dict({"schema": vars(gen_schema), "generate": {"decoder": "scratch"}})
    gen = make_plan(profile_table(table, gen_schema), cfg, len(table))
    assert gen.settings["augment"]["audio_crop"] == 0.0 and gen.settings["augment"]["audio_shift"] == 0.0
    # A clip alone in, text out: a transcript, whose scratch encoder gets the CTC loss; not beside
    # another input (an image here; a question would be answered, not transcribed), nor with a
    # pretrained tower.
    assert "ctc" not in gen.settings.get("generate", {})
    heard = dataclasses.replace(gen_schema, image=[])
    for encoder, ctc in (("scratch", 0.3), (str(tmp_path / "some_tower"), None)):
        heard_cfg = Config.from_dict({"schema": vars(heard), "generate": {"decoder": "scratch"},
                                      "audio": {"encoder": encoder}})
        heard_plan = make_plan(profile_table(table, heard), heard_cfg, len(table))
        assert heard_plan.settings.get("generate", {}).get("ctc") == ctc
        assert heard_plan.settings.get("generate", {}).get("ctc_rescore") == (0.3 if ctc else None)
        if encoder == "scratch":
            assert heard_plan.settings["audio"]["level"] == "band" and gen.settings["audio"]["level"] == "clip"
    plan, _ = _plan(path)
    assert "audio_crop" not in plan.settings.get("augment", {})       # classification keeps the defaults
    # Two modalities: classification drops one at times; a generation target needs them together.
    assert plan.settings["model"]["modality_dropout"] > 0 and "modality_dropout" not in gen.settings["model"]
    # A question's words decide its answer: generation keeps every word; classification drops some.
    vqa_schema = dataclasses.replace(SCHEMA, task="generation", audio=[])
    vqa_cfg = Config.from_dict({"schema": vars(vqa_schema), "generate": {"decoder": "scratch"}})
    vqa = make_plan(profile_table(table, vqa_schema), vqa_cfg, len(table))
    assert vqa.settings["augment"]["token_dropout"] == 0.0 and vqa.settings["augment"]["span_mask"] == 0.0
    assert "token_dropout" not in plan.settings.get("augment", {}) and "token_dropout" not in gen.settings["augment"]
    # Generation keeps averaged weights (its epochs are picked on noisy token accuracy); classification does not.
    assert gen.settings["train"]["ema_epochs"] == vqa.settings["train"]["ema_epochs"] == 2.0
    assert "ema_epochs" not in plan.settings["train"]
    # A scratch decoder is small: the prefix stays whole and the batch is the table's.
    assert "prefix_tokens" not in gen.settings.get("generate", {})
    assert gen.settings["train"]["batch_size"] == plan.settings["train"]["batch_size"]
    lm = Config.from_dict({"schema": vars(gen_schema), "generate": {"decoder": str(tmp_path / "lm")}})
    pre = make_plan(profile_table(table, gen_schema), lm, len(table))
    assert pre.settings["generate"]["prefix_tokens"] == 10
    assert pre.settings["train"]["batch_size"] == 16 and pre.settings["train"]["lr"] == pytest.approx(1e-3)


def test_contrastive_pretraining_on_frozen_towers_locks_the_text_tower_and_drops_tower_tokens(tmp_path):
    path = _table(tmp_path)
    table = read_table(path)
    schema = SchemaConfig(text=["text"], image=["image"], audio=[], label=None, task=None)
    towers = {"text": {"encoder": str(tmp_path / "text_tower")}, "image": {"encoder": str(tmp_path / "image_tower")}}
    cfg = Config.from_dict({"schema": vars(schema), **towers, "pretrain": {"objectives": ["contrastive"]}})
    plan = make_plan(profile_table(table, schema), cfg, len(table), supervised=False)
    assert plan.settings["pretrain"] == {"lock_towers": True, "lock_columns": ["text"]}
    assert plan.settings["model"]["tower_token_drop"] == 0.5
    # Not for supervised training, not without contrastive, and not when the text is learned from scratch.
    assert "pretrain" not in make_plan(profile_table(table, schema), cfg, len(table)).settings
    mlm = Config.from_dict({"schema": vars(schema), **towers, "pretrain": {"objectives": ["mlm"]}})
    assert "pretrain" not in make_plan(profile_table(table, schema), mlm, len(table), supervised=False).settings
    scratch_text = Config.from_dict({"schema": vars(schema), "image": towers["image"],
                                     "pretrain": {"objectives": ["contrastive"]}})
    plan = make_plan(profile_table(table, schema), scratch_text, len(table), supervised=False)
    assert "pretrain" not in plan.settings and plan.settings["model"]["tower_token_drop"] == 0.5
    adapted = Config.from_dict({"schema": vars(schema), **towers, "pretrain": {"objectives": ["contrastive"]},
                                "model": {"freeze_encoders": True, "unfreeze_top_k": 1}})
    plan = make_plan(profile_table(table, schema), adapted, len(table), supervised=False)
    assert "pretrain" not in plan.settings and "tower_token_drop" not in plan.settings["model"]


def test_a_transcript_hears_the_whole_longest_clip_where_a_label_stops_at_the_95th_percentile(tmp_path):
    import dataclasses
    path = _table(tmp_path)                                        # 60 clips of 1.5 s
    for i in (3, 7):                                               # two longer ones: 3% of the table
        sf.write(tmp_path / f"wav/{i}.wav", np.zeros(11025 * 4, dtype=np.float32), 11025)
    table = read_table(path)
    plan, _ = _plan(path)
    assert plan.settings["audio"]["max_seconds"] == pytest.approx(1.5, abs=0.01)
    gen_schema = dataclasses.replace(SCHEMA, task="generation", label="text", text=[])
    cfg = Config.from_dict({"schema": vars(gen_schema), "generate": {"decoder": "scratch"}})
    gen = make_plan(profile_table(table, gen_schema), cfg, len(table))
    assert gen.settings["audio"]["max_seconds"] == pytest.approx(4.0, abs=0.01)


def test_mixed_sample_rates_plan_the_low_rate_a_tenth_of_the_files_share(tmp_path):
    """Upsampling adds no bandwidth: with 30% of the clips at 8 kHz, every clip goes to 8 kHz, though
    most are at 22.05 kHz; one stray 8 kHz clip in 60 does not pull the rest down."""
    def mixed(folder, low):
        _table(folder, rate=22050)
        for i in range(low):
            sf.write(folder / f"wav/{i}.wav", np.zeros(12000, np.float32), 8000)
        return folder / "t.csv"

    plan, _ = _plan(mixed(tmp_path / "a", 18))
    assert plan.settings["audio"]["sample_rate"] == 8000
    assert "8000 Hz (most at 22050 Hz)" in plan.reasons["audio.sample_rate"]
    plan, _ = _plan(mixed(tmp_path / "b", 1))
    assert plan.settings["audio"]["sample_rate"] == 16000
