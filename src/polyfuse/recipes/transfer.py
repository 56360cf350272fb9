"""Fine-tuning from an earlier run (`polyfuse train --init-from RUN`): its architecture, preprocessing
and encoder + fusion weights; the task head is always fresh.

The run's model and preprocessing sections become the new run's base config (flags still override),
and its tokenizer and audio statistics are reused so token ids and normalisation mean what they meant
in pretraining. Weights must match one to one: a different architecture is an error that lists
every mismatched weight, unless allow_partial, which loads what matches and prints what it skipped.
"""
from __future__ import annotations

from pathlib import Path

from ..config import Config, SchemaConfig
from ..data.audio import AudioProcessor
from ..data.processors import Processors
from ..data.text import TextProcessor
from ..errors import PolyfuseError
from ..runfolder import RunFolder

TRANSFERRED = ("encoders.", "fusion.")     # the head (and pretraining objectives) never transfer


def source_run(run_dir: str | Path) -> RunFolder:
    folder = RunFolder(run_dir)
    folder.require("supervised", "pretrained", purpose="--init-from")
    return folder


def base_config(run_dir: str | Path) -> Config:
    """The run's text/image/audio/model sections; schema and training settings start from defaults."""
    saved = source_run(run_dir).config
    return Config(text=saved.text, image=saved.image, audio=saved.audio, model=saved.model)


def processors_from(cfg: Config, schema: SchemaConfig, run_dir: str | Path, table, say=print) -> Processors:
    """The run's processors for the modalities it has; others are fitted on `table` as usual."""
    folder = source_run(run_dir).file(RunFolder.PROCESSORS)
    procs = Processors.build(cfg, schema)
    fresh = {}
    for m in procs.by_modality:
        if m == "text" and (folder / "tokenizer.json").exists():
            procs.by_modality[m] = TextProcessor.load(cfg.text, folder)
        elif m == "audio" and (folder / "audio.json").exists():
            procs.by_modality[m] = AudioProcessor.load(cfg.audio, folder)
        elif m in ("text", "audio"):
            fresh[m] = procs.by_modality[m]
    if fresh:
        say(f"--init-from: {run_dir} has no saved {', '.join(fresh)} preprocessing; fitting it on the training rows")
        Processors(cfg, schema, fresh).fit(table)
    return procs


def load_encoders(model, run_dir: str | Path, allow_partial: bool = False, say=print) -> dict:
    """Copy encoder and fusion weights from run_dir into model. Returns {"loaded": n, "skipped": [...]}."""
    saved = {k: v for k, v in source_run(run_dir).weights().items() if k.startswith(TRANSFERRED)}
    own = {k: v for k, v in model.state_dict().items() if k.startswith(TRANSFERRED)}
    missing = sorted(k for k in own if k not in saved)
    unexpected = sorted(k for k in saved if k not in own)
    shape = sorted(k for k in own if k in saved and own[k].shape != saved[k].shape)
    problems = ([f"  {k}: in the model {tuple(own[k].shape)}, not in the checkpoint" for k in missing]
                + [f"  {k}: in the checkpoint {tuple(saved[k].shape)}, not in the model" for k in unexpected]
                + [f"  {k}: model {tuple(own[k].shape)} vs checkpoint {tuple(saved[k].shape)}" for k in shape])
    if problems and not allow_partial:
        raise PolyfuseError(
            f"--init-from {run_dir}: the checkpoint's architecture differs from this model's "
            f"({len(problems)} mismatched weight(s)):\n" + "\n".join(problems[:40])
            + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else "")
            + "\nUse the same size/fusion/columns as the pretraining run, or pass --allow-partial "
              "to load only the matching weights.")
    matched = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    if problems:
        say(f"--allow-partial: loaded {len(matched)} weight tensors from {run_dir}; skipped {len(problems)}:\n"
            + "\n".join(problems))
    else:
        say(f"--init-from: loaded {len(matched)} encoder/fusion weight tensors from {run_dir}; fresh head")
    return {"loaded": len(matched), "skipped": missing + unexpected + shape}
