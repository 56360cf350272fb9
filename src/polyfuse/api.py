"""The Python API, scikit-learn style: constructors store arguments; fit/predict/predict_proba/score do the work.

    model = polyfuse.Polyfuse(label="label", image="img", audio="wav", size="tiny").fit(train_df, val_df)
    model.predict(test_df); model.score(test_df); model.save("runs/exp1")
    tuned = polyfuse.Polyfuse(label="label", init_from="runs/pre").fit(few_labels_df)   # from `polyfuse pretrain`
    same = polyfuse.load("runs/exp1")
    captioner = polyfuse.Polyfuse(label="caption", image="img", task="generation", decoder="path/to/causal-lm").fit(df)
    captioner.generate(test_df)                     # a list of texts (predict returns the same as an array)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import Config, read_config_file, set_keys
from .data.labels import Predictions
from .inference import Predictor


class Polyfuse:
    def __init__(self, label=None, text=None, image=None, audio=None, task=None, size=None, fusion=None,
                 epochs=None, batch_size=None, lr=None, seed=None, config=None, out=None, base_dir=None,
                 progress=False, init_from=None, allow_partial=False, max_minutes=None, preset=None,
                 group_by=None, decoder=None, prompt=None):
        self.label, self.text, self.image, self.audio, self.task = label, text, image, audio, task
        self.size, self.fusion, self.epochs, self.batch_size, self.lr, self.seed = size, fusion, epochs, batch_size, lr, seed
        self.config, self.out, self.base_dir, self.progress = config, out, base_dir, progress
        # init_from: a run folder whose encoders, fusion and preprocessing start the model (its
        # architecture too, unless `config` is given), as `polyfuse train --init-from`.
        self.init_from, self.allow_partial = init_from, allow_partial
        # Settings not given are chosen from the training table (planning/), as `polyfuse train`
        # does; a Config object is taken as complete and nothing is planned. group_by: the column
        # whose values validation holds out whole ("auto": one that looks like a group; None: rows).
        self.max_minutes, self.preset, self.group_by = max_minutes, preset, group_by
        self.decoder = decoder          # task="generation": a Hugging Face causal LM folder
        self.prompt = prompt            # task="generation": the decoder's prompt template, {column} from each row

    # -- the config a user asked for: only values they set override the defaults ----------
    def build_config(self) -> Config:
        return self._config()[0]

    def _config(self) -> tuple[Config, set[str] | None]:
        """The config, and the keys the user set (None: a Config object, complete as given)."""
        written = {}
        if isinstance(self.config, Config):
            base = self.config
        elif self.config:
            written = read_config_file(self.config)
            base = Config.from_dict(written)
        elif self.init_from:
            from .recipes.transfer import base_config
            base = base_config(self.init_from)
        else:
            base = Config()
        overrides = {
            "schema": {"label": self.label, "text": _cols(self.text), "image": _cols(self.image),
                       "audio": _cols(self.audio), "task": self.task},
            "model": {"size": self.size, "fusion": self.fusion},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                      "max_minutes": self.max_minutes, "group_by": self.group_by},
            "generate": {"decoder": self.decoder, "prompt": self.prompt},
        }
        fixed = None if isinstance(self.config, Config) else set_keys(written, overrides)
        return base.merged(overrides), fixed

    def fit(self, train, val=None) -> "Polyfuse":
        from .recipes.train import train_run
        out = self.out or tempfile.mkdtemp(prefix="polyfuse-")
        cfg, fixed = self._config()
        if cfg.schema.task == "generation":
            from .recipes.generate import train_generation
            self.generator_, self.summary_ = train_generation(cfg, train, val, out, base_dir=self.base_dir,
                                                              progress=self.progress, fixed=fixed, preset=self.preset)
            self.run_dir_ = Path(out)
            return self
        self.predictor_, self.summary_ = train_run(cfg, train, val, out, base_dir=self.base_dir,
                                                   progress=self.progress, init_from=self.init_from,
                                                   allow_partial=self.allow_partial, fixed=fixed, preset=self.preset)
        self.run_dir_ = Path(out)
        self.classes_ = np.array(self.predictor_.labels.classes)
        return self

    def _encoded(self, data):
        p = self._fitted()
        return p.encode(p.read(data, self.base_dir))

    def predictions(self, data) -> Predictions:
        """Every row's prediction and probabilities, in label units: what predict and predict_proba read."""
        return self._fitted().predict(self._encoded(data))

    def predict_proba(self, data) -> np.ndarray:
        if self._fitted().labels.task == "regression":
            raise AttributeError("predict_proba is for classification; use predict for regression")
        return self.predictions(data).probabilities()

    def predict(self, data) -> np.ndarray:
        if hasattr(self, "generator_"):
            return np.array(self.generate(data), dtype=object)
        return self.predictions(data).values()

    def generate(self, data, **decoding) -> list[str]:
        """A generation model's text for every row; `decoding` overrides config section generate
        (max_new_tokens, num_beams, do_sample, temperature, top_p, ctc_rescore)."""
        if not hasattr(self, "generator_"):
            raise RuntimeError("generate() needs a generation model (task='generation'): call fit() or polyfuse.load()")
        g = self.generator_
        return g.generate(g.encode(g.read(data, self.base_dir)), **decoding)

    def score(self, data) -> float:
        """Accuracy (classification), micro-F1 (multi-label) or R^2 (regression), as scikit-learn would."""
        from .evaluation.evaluate import headline
        p = self._fitted()
        return headline(p, p.encode(p.read(data, self.base_dir), with_labels=True))

    def save(self, path):
        self._fitted().save(Path(path))
        return self

    def _fitted(self) -> Predictor:
        if not hasattr(self, "predictor_"):
            raise RuntimeError("this Polyfuse model is not fitted yet: call fit() or polyfuse.load()")
        return self.predictor_


def load(path, device: str | None = None) -> Polyfuse:
    """A fitted Polyfuse from a run folder; gives the same predictions as the model that was saved."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .runfolder import RunFolder
    if RunFolder(path).kind == "generation":
        from .generation.run import Generator
        g = Generator.load(path, device)
        s = g.schema
        est = Polyfuse(label=s.label, text=s.text, image=s.image, audio=s.audio, task=s.task, config=g.cfg)
        est.generator_, est.run_dir_ = g, Path(path)
        return est
    p = Predictor.load(path, device)
    s = p.schema
    est = Polyfuse(label=s.label, text=s.text, image=s.image, audio=s.audio, task=s.task, config=p.cfg)
    est.predictor_, est.run_dir_, est.classes_ = p, Path(path), np.array(p.labels.classes)
    return est


def _cols(v):
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)
