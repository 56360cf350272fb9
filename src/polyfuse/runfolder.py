"""The run folder: the one type that reads and writes a run's files. Nothing else opens them.

    runs/exp1/
      config.json         format version, kind, the full resolved config, sizes, what made it;
                          written last, so its presence means "finished model"
      model.safetensors   weights (nothing is pickled)
      processors/         tokenizer.json, audio normalisation, pretrained towers' own configs
      labels.json         label map (supervised runs)      schema.json   which column is which modality
      log.jsonl           one line per epoch               metrics.json  last evaluation
      plan.json           settings chosen from the data (planning/), each with its reason, and the budget used
      skipped.csv         rows skipped with --on-bad-row   checkpoint/   optimizer, RNG, trainer state

Kinds: `supervised` (a task head: predict, evaluate, serve), `pretrained` (encoders, fusion and the
objectives' heads, from `polyfuse pretrain`: embed, search, --init-from), `exported` (ONNX files beside
the preprocessing, from `polyfuse export`: serve), `generation` (encoders, fusion, projector and a
decoder whose tokenizer and config are in processors/decoder/: predict and evaluate write text). Every file is written under a temporary name and
renamed into place; the checkpoint is written whole into checkpoint.tmp/ and swapped in.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Config
from .errors import ConfigError, PolyfuseError
from .util import atomic_save_tensors, atomic_write_json

FORMAT_VERSION = 2     # 1: no kind for supervised runs, pretraining settings beside the config
KINDS = ("supervised", "pretrained", "exported", "generation")


@dataclass
class RunMeta:
    """What config.json says: enough to rebuild the model before its weights are loaded."""
    kind: str
    config: Config
    vocab_size: int | None = None        # the text processor's, when there is one
    n_outputs: int | None = None         # the task head's width (supervised and exported runs)
    info: dict = field(default_factory=dict)   # how it was made: epoch, rows, parameters, pruning, export

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "config": self.config.to_dict(),
                "vocab_size": self.vocab_size, "n_outputs": self.n_outputs, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict, where: Path) -> "RunMeta":
        version = d.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise PolyfuseError(f"{where}: run folder format version {version} is not supported "
                                f"(this Polyfuse reads 1 and {FORMAT_VERSION})")
        config = dict(d["config"])
        info = d.get("info", {})
        if version == 1:      # the pretraining settings and "what made it" had keys of their own
            if "pretrain" in d:
                config["pretrain"] = d["pretrain"]
            info = {**d.get("trained", {}), **d.get("pretrained", {}), **({"pruned": d["pruned"]} if "pruned" in d else {})}
        kind = d.get("kind") or "supervised"
        if kind not in KINDS:
            raise PolyfuseError(f"{where}: unknown run kind {kind!r}")
        return cls(kind, Config.from_dict(config), d.get("vocab_size"), d.get("n_outputs"), info)


class RunFolder:
    CONFIG, WEIGHTS, LABELS, SCHEMA = "config.json", "model.safetensors", "labels.json", "schema.json"
    LOG, METRICS, SKIPPED, PROCESSORS, CHECKPOINT = "log.jsonl", "metrics.json", "skipped.csv", "processors", "checkpoint"
    PLAN = "plan.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._meta: RunMeta | None = None

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # -- what the folder holds -------------------------------------------------------------------
    def is_finished(self) -> bool:
        return self.file(self.CONFIG).exists()

    def meta(self) -> RunMeta:
        if self._meta is None:
            if not self.is_finished():
                raise PolyfuseError(f"{self.path} is not a finished Polyfuse run folder (no {self.CONFIG}; "
                                    "was training interrupted before its first epoch ended?)")
            try:
                raw = json.loads(self.file(self.CONFIG).read_text())
            except ValueError as e:
                raise PolyfuseError(f"{self.file(self.CONFIG)} is not valid JSON: {e}") from None
            self._meta = RunMeta.from_dict(raw, self.path)
        return self._meta

    @property
    def kind(self) -> str:
        return self.meta().kind

    @property
    def config(self) -> Config:
        return self.meta().config

    def require(self, *kinds: str, purpose: str = "this command") -> RunMeta:
        """The meta of a finished run of one of these kinds, else an error saying what to do instead."""
        meta = self.meta()
        if meta.kind not in kinds:
            hint = {"pretrained": f"it is a pretraining run (encoders, no task head): fine-tune it with "
                                  f"`polyfuse train --init-from {self.path} ...`, or embed and search with it",
                    "exported": "it is an ONNX export: serve it with `polyfuse serve`; other commands need "
                                "the run folder it was exported from",
                    "supervised": "it is a supervised run",
                    "generation": "it is a generation run (a decoder writes text): use `polyfuse predict` "
                                  "or `polyfuse evaluate` with it"}[meta.kind]
            raise PolyfuseError(f"{self.path}: {purpose} needs a {' or '.join(kinds)} run folder; {hint}")
        if meta.kind != "exported" and not self.file(self.WEIGHTS).exists():
            raise PolyfuseError(f"{self.path} has {self.CONFIG} but no {self.WEIGHTS}")
        return meta

    def start(self, cfg: Config, resume: bool) -> Config:
        """The config a run in this folder trains with. A new run refuses a folder that holds one;
        a resumed run keeps its own config over the flags that came with --resume, except its budgets."""
        if not resume and (self.is_finished() or self.file(self.CHECKPOINT).exists()):
            raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it or choose another --out")
        if resume and self.is_finished():
            return self.config.merged({"train": {"epochs": cfg.train.epochs, "max_minutes": cfg.train.max_minutes}})
        return cfg

    # -- preprocessing ---------------------------------------------------------------------------
    def write_preprocessing(self, processors, labels=None):
        """Processors, schema and (supervised) label map: written once, before training starts."""
        self.path.mkdir(parents=True, exist_ok=True)
        processors.save(self.file(self.PROCESSORS))
        s = processors.schema
        atomic_write_json(self.file(self.SCHEMA), {"text": s.text, "image": s.image, "audio": s.audio,
                                                   "label": s.label, "task": s.task})
        if labels is not None:
            atomic_write_json(self.file(self.LABELS), labels.to_dict())

    def has_processors(self) -> bool:
        return self.file(self.PROCESSORS).exists()

    def processors(self, cfg: Config | None = None):
        from .data.processors import Processors
        cfg = cfg or self.config
        return Processors.load(cfg, cfg.schema, self.file(self.PROCESSORS))

    def labels(self):
        from .data.labels import LabelCodec
        path = self.file(self.LABELS)
        return LabelCodec.from_dict(json.loads(path.read_text())) if path.exists() else None

    def schema(self) -> dict:
        return json.loads(self.file(self.SCHEMA).read_text())

    # -- weights ---------------------------------------------------------------------------------
    def write_model(self, state: dict, meta: RunMeta):
        """Weights, then config.json last: the file whose presence says the folder holds a finished model."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.file(self.WEIGHTS), state,
                            metadata={"format": "polyfuse", "format_version": str(FORMAT_VERSION), "kind": meta.kind})
        atomic_write_json(self.file(self.CONFIG), meta.to_dict())
        self._meta = meta

    def weights(self) -> dict:
        return load_file(str(self.file(self.WEIGHTS)))

    def weights_bytes(self) -> int:
        return self.file(self.WEIGHTS).stat().st_size

    def identity(self) -> str:
        """sha256 of the weights and config.json: two runs share it only if they compute the same."""
        h = hashlib.sha256()
        for name in (self.WEIGHTS, self.CONFIG):
            with open(self.file(name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:32]

    # -- logs and results ------------------------------------------------------------------------
    def append_log(self, record: dict):
        with open(self.file(self.LOG), "a") as f:
            f.write(json.dumps(record) + "\n")

    def log(self) -> list[dict]:
        path = self.file(self.LOG)
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def write_metrics(self, result: dict, path: Path | None = None) -> Path:
        """metrics.json in the folder, or at `path` (a .json file, or a folder to put metrics.json in)."""
        out = Path(path) if path else self.file(self.METRICS)
        if out.suffix != ".json":
            out.mkdir(parents=True, exist_ok=True)
            out = out / self.METRICS
        atomic_write_json(out, result)
        return out

    def metrics(self) -> dict:
        path = self.file(self.METRICS)
        return json.loads(path.read_text()) if path.exists() else {}

    def write_skipped(self, skipped: list[dict]):
        """One line per skipped row: table, row, column, file, reason."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(self.SKIPPED), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["table", "row", "column", "file", "reason"], extrasaction="ignore")
            w.writeheader()
            w.writerows(skipped)

    def write_plan(self, plan: dict):
        """The settings chosen from the data, with their reasons and how validation was held out."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file(self.PLAN), plan)

    def plan(self) -> dict | None:
        path = self.file(self.PLAN)
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, obj):
        atomic_write_json(self.file(name), obj)

    def clear(self, *names: str):
        """Remove these files or folders (a demo or a fresh run starting over)."""
        for name in names:
            p = self.file(name)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self._meta = None

    # -- export ----------------------------------------------------------------------------------
    def export_to(self, dest: "RunFolder", info: dict):
        """Copy the preprocessing (processors, labels, schema) and write dest's config.json as kind 'exported'."""
        meta = self.require("supervised", purpose="export")
        dest.path.mkdir(parents=True, exist_ok=True)
        for name in (self.LABELS, self.SCHEMA):
            shutil.copy2(self.file(name), dest.file(name))
        shutil.copytree(self.file(self.PROCESSORS), dest.file(self.PROCESSORS), dirs_exist_ok=True)
        dest._meta = dataclasses.replace(meta, kind="exported", info={**info, "source": str(self.path)})
        atomic_write_json(dest.file(self.CONFIG), dest._meta.to_dict())

    # -- the resumable training state, without pickle --------------------------------------------
    def has_checkpoint(self) -> bool:
        final = self.file(self.CHECKPOINT)
        if not (final / "trainer.json").exists():
            # Killed between save_checkpoint's two renames: the new folder is whole once its
            # trainer.json exists (written last), else the previous one still is.
            for aside in (self.CHECKPOINT + ".tmp", self.CHECKPOINT + ".old"):
                if (self.file(aside) / "trainer.json").exists():
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(self.file(aside), final)
                    break
        return (final / "trainer.json").exists()

    def save_checkpoint(self, model_state: dict, best_state: dict | None, opt: torch.optim.Optimizer, trainer: dict,
                        average: dict | None = None):
        """average: train.ema_epochs' running average of the weights, kept beside the live ones."""
        final, tmp = self.file(self.CHECKPOINT), self.file(self.CHECKPOINT + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(model_state, str(tmp / "model.safetensors"))
        if best_state is not None:
            save_file(best_state, str(tmp / "best.safetensors"))
        if average is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in average.items()}, str(tmp / "average.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_tensors(opt)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))   # last: marks the folder complete
        old = self.file(self.CHECKPOINT + ".old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> dict | None:
        if not self.has_checkpoint():
            return None
        folder = self.file(self.CHECKPOINT)
        best, average = folder / "best.safetensors", folder / "average.safetensors"
        return {
            "model": load_file(str(folder / "model.safetensors")),
            "best": load_file(str(best)) if best.exists() else None,
            "average": load_file(str(average)) if average.exists() else None,
            "optimizer": _optimizer_from_tensors(load_file(str(folder / "optimizer.safetensors")),
                                                 json.loads((folder / "optimizer.json").read_text())),
            "rng": load_file(str(folder / "rng.safetensors"))["torch"],
            "trainer": json.loads((folder / "trainer.json").read_text()),
        }


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"state.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_tensors(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


__all__ = ["FORMAT_VERSION", "KINDS", "RunFolder", "RunMeta"]
