"""The plan in a run: made (or, on --resume, read back), applied, printed and saved; the budget's outcome."""
from __future__ import annotations

import dataclasses

from ..config import Config, TrainConfig
from .plan import Plan, apply_plan, format_plan, make_plan
from .profile import profile_table

ARCHITECTURE = ("text", "image", "audio", "model")   # what --init-from fixes: the earlier run's


def plan_config(cfg: Config, train_t, folder, fixed: set[str], preset: str | None, resume: bool,
                init_from, split_note: str | None, say, is_main: bool, supervised: bool = True) -> Config:
    """cfg with the plan applied to every key not in `fixed`; plan.json written (main process)."""
    fixed = set(fixed)
    if init_from:
        fixed |= {f"{s}.{f.name}" for s in ARCHITECTURE for f in dataclasses.fields(getattr(cfg, s))}
    if "train.epochs" in fixed:      # a number of epochs asked for: the budget only caps it
        fixed.add("train.fill_budget")
    saved = folder.plan() if resume else None
    if saved is not None:
        plan, profile = Plan.from_dict(saved["plan"]), saved["profile"]
    else:
        profile = profile_table(train_t, cfg.schema, cfg.train.seed)
        plan = make_plan(profile, cfg, len(train_t), preset, cfg.train.max_minutes, supervised)
    planned, source = apply_plan(cfg, plan, fixed)      # merged: validated, the schema carried over
    say("plan (from the data; override any value with a flag, --set SECTION.KEY=VALUE or --config):\n"
        + format_plan(plan, planned, source))
    if is_main:
        folder.write_plan({"preset": preset, "plan": plan.to_dict(), "source": source, "validation": split_note,
                           "profile": profile})
    return planned


def budget_outcome(tc: TrainConfig, summary: dict, validated: bool) -> dict:
    """How the run ended and how much of the time budget it used, in numbers and in a sentence."""
    used = summary["elapsed_s"]
    out = {"epochs": summary["epoch"], "planned_epochs": summary.get("epochs") or tc.epochs,
           "elapsed_s": round(used, 1), "stopped": summary["stopped"] or "all_epochs"}
    if summary["stopped"] == "early_stopping":
        why = f"validation stopped it after epoch {summary['epoch']} (no improvement since epoch {summary['best_epoch']})"
    elif summary["stopped"] == "max_minutes":
        why = f"the time limit stopped it in epoch {summary['epoch']}"
    else:
        why = f"all {out['planned_epochs']} planned epochs ran" + ("" if validated else " (no validation rows)")
    said = f"training: {why}; {used / 60:.1f} min"
    if tc.max_minutes is not None:
        out["budget_s"] = tc.max_minutes * 60
        out["budget_used"] = round(used / out["budget_s"], 3)
        said += f" of the {tc.max_minutes:g} min budget ({out['budget_used']:.0%})"
    if rising(summary):
        out["still_rising"] = True
        said += (f"; the validation score rose to a new high in epoch {summary['rising_epoch']} of "
                 f"{summary['epoch']}: a longer run (--max-minutes, train.epochs) may score higher")
    out["said"] = said
    return out


def rising(summary: dict) -> bool:
    """The run ended while its validation score still climbed: it ran every epoch (or hit its time
    limit) and the score rose above every earlier epoch's, by more than its noise, in the last
    tenth of the epochs (at least the last two). A score level at its top while the loss still
    falls is not rising, and neither is a first epoch with nothing before it."""
    if summary["stopped"] == "early_stopping" or summary["rising_epoch"] is None or summary["rising_epoch"] < 2:
        return False
    return summary["rising_epoch"] > summary["epoch"] - max(2, summary["epoch"] // 10)


def preview(cfg: Config, train, val, fixed: set[str], preset: str | None, init_from=None, base_dir=None) -> str:
    """What `train` would print before its first step: the schema, the validation split and the plan."""
    from ..data.manifest import read_table, resolve_schema
    from .split import holdout

    class _NoFolder:       # nothing is written by a preview
        def plan(self):
            return None

        def write_plan(self, _):
            pass

    lines = []
    train_t = read_table(train, base_dir)
    schema = resolve_schema(train_t, cfg.schema)
    cfg = dataclasses.replace(cfg, schema=schema).validate()
    lines.append(f"schema: text={schema.text} image={schema.image} audio={schema.audio} "
                 f"label={schema.label!r} task={schema.task}")
    note = None
    if val is None:
        train_t, _, note = holdout(train_t, schema, cfg.train.val_fraction, cfg.train.group_by, cfg.train.seed)
        lines.append(note)
    plan_config(cfg, train_t, _NoFolder(), fixed, preset, False, init_from, note, lines.append, False)
    return "\n".join(lines)
