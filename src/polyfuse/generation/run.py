"""A trained generation model with what it needs to read rows and write text: the generation
counterpart of inference.Predictor (the one path `polyfuse predict`, `evaluate` and the API use)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.dataset import EncodedSet, encode_table, take
from ..data.manifest import Table
from ..data.pretrained import tower_sources
from ..model import load_state
from ..runfolder import RunFolder, RunMeta
from ..util import state_dict_cpu, to_device
from .metrics import text_metrics
from .model import SCRATCH, GenerationModel, load_decoder
from .prompt import row_prompts
from .targets import TextTargets


def make_collate(processors, targets: TextTargets):
    """Rows -> {"inputs", "target": {"ids", "mask"}, "prompt": {"ids", "mask"}} (target only when every
    row has one; prompt when the run has generate.prompt)."""
    def collate(batch_idx, data: EncodedSet):
        batch = {"inputs": processors.collate(take(data.inputs, batch_idx))}
        ys = [data.labels[i] for i in batch_idx]
        if ys and all(y is not None for y in ys):
            batch["target"] = targets.collate(ys)
        if data.prompts is not None:
            batch["prompt"] = targets.collate([data.prompts[i] for i in batch_idx])
        return batch
    return collate


def add_prompts(cfg: Config, targets: TextTargets, table: Table, data: EncodedSet) -> EncodedSet:
    """data with each row's decoder prompt (generate.prompt filled from its table row), if the run has one."""
    g = cfg.generate
    if g.prompt is not None:
        data.prompts = [targets.encode_prompt(t, g.max_prompt_tokens) for t in row_prompts(g.prompt, table, data.rows)]
    return data


def build_generation_model(cfg: Config, processors, targets: TextTargets, pretrained_weights: bool) -> GenerationModel:
    fresh = pretrained_weights and cfg.generate.decoder != SCRATCH
    lm = load_decoder(cfg.generate.decoder if fresh else targets.model_config, fresh)
    text = processors.text
    return GenerationModel(cfg, cfg.schema, lm, text.vocab_size if text is not None else None,
                           towers=tower_sources(processors, pretrained_weights), start_ids=targets.start_ids)


class Generator:
    def __init__(self, cfg: Config, processors, targets: TextTargets, model: GenerationModel, info=None):
        self.cfg, self.processors, self.targets, self.model = cfg, processors, targets, model
        self.schema = cfg.schema
        self.info = dict(info or {})
        self.collate = make_collate(processors, targets)

    def save_weights(self, run_dir, info: dict | None = None):
        self.info.update(info or {})
        text = self.processors.text
        meta = RunMeta("generation", self.cfg, text.vocab_size if text is not None else None, None, dict(self.info))
        RunFolder(run_dir).write_model(state_dict_cpu(self.model), meta)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Generator":
        folder = RunFolder(run_dir)
        meta = folder.require("generation", purpose="generation")
        cfg = meta.config
        processors = folder.processors(cfg)
        targets = TextTargets.load(folder.file(folder.PROCESSORS), cfg.generate.max_target_tokens)
        model = build_generation_model(cfg, processors, targets, pretrained_weights=False)
        load_state(model, folder.weights(), folder.file(folder.WEIGHTS))
        return cls(cfg, processors, targets, model.to(device).eval(), meta.info)

    def read(self, source, base_dir=None) -> Table:
        from ..inference import read_inputs
        return read_inputs(self.schema, source, base_dir)

    def encode(self, table: Table, with_targets: bool = False, on_bad_row: str = "error",
               progress: bool = False) -> EncodedSet:
        data = encode_table(table, self.processors, self.targets if with_targets else None, on_bad_row, progress)
        return add_prompts(self.cfg, self.targets, table, data)

    @torch.no_grad()
    def generate(self, data: EncodedSet, batch_size: int = 16, **decoding) -> list[str]:
        """The generated text of every encoded row; `decoding` overrides config section generate."""
        out = []
        for i in range(0, len(data), batch_size):
            prompts = data.prompts[i:i + batch_size] if data.prompts is not None else None
            out += self.generate_items(data.inputs[i:i + batch_size], prompts=prompts, **decoding)
        return out

    @torch.no_grad()
    def generate_items(self, items: list[dict], streamer=None, limits: list[int] | None = None,
                       prompts: list[torch.Tensor] | None = None, **decoding) -> list[str]:
        """Processed rows ({column: processed cell or None}, as EncodedSet.inputs and the server hold
        them) -> their text in one batch; `streamer` (a transformers streamer) sees each new token;
        `limits`: each row's own token budget within the batch's max_new_tokens; `prompts`: each
        row's prompt ids (a run with generate.prompt)."""
        import dataclasses
        g = dataclasses.replace(self.cfg.generate, **decoding)
        self.model.eval()
        device = next(self.model.parameters()).device
        inputs = to_device(self.processors.collate(items), device)
        prompt = to_device(self.targets.collate(prompts), device) if prompts is not None else None
        ids = self.model.generate(inputs, g, self.targets.eos_id, self.targets.pad_id, streamer, prompt)
        if limits is not None:
            ids = [row[:n] for row, n in zip(ids, limits)]
        return [self.targets.decode(row) for row in ids]

    @torch.no_grad()
    def pooled(self, data: EncodedSet, batch_size: int = 64) -> np.ndarray:
        """(N, D) each row's fused vector: the nearest-neighbour baseline's embedding."""
        self.model.eval()
        chunks = []
        for i in range(0, len(data), batch_size):
            batch = self.collate(list(range(i, min(i + batch_size, len(data)))), data)
            chunks.append(self.model.body.encode(batch["inputs"]).pooled.float().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.cfg.model.d_model), np.float32)

    def evaluate(self, data: EncodedSet, references: list[list[str]], batch_size: int = 16) -> dict:
        return self.score(data, self.generate(data, batch_size), references)

    @staticmethod
    def score(data: EncodedSet, generated: list[str], references: list[list[str]]) -> dict:
        """The metrics of generated text (one per encoded row) against each row's references."""
        return {**text_metrics(generated, references), "task": "generation",
                "examples": [{"row": int(r), "generated": g, "references": refs}
                             for r, g, refs in list(zip(data.rows, generated, references))[:20]]}


def references_of(table: Table, rows, column: str) -> list[list[str]]:
    """Each row's reference texts: the column's value, or several split at '|' (as multi-label values are)."""
    out = []
    for r in rows:
        v = table.df.at[r, column]
        out.append([p.strip() for p in str(v).split("|") if p.strip()])
    return out


def nearest_neighbour(gen: Generator, train: EncodedSet, train_texts: list[str], data: EncodedSet) -> list[str]:
    """The baseline: for each row, the training text of the training row whose fused vector is most
    similar (cosine), by the run's own encoders."""
    a, b = gen.pooled(data), gen.pooled(train)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return [train_texts[j] for j in (a @ b.T).argmax(1)]


class RowStreamer:
    """A transformers streamer for a batch: each step's new token per row -> on_text(row, new text).

    Rows stop at their end-of-text (generate pads finished rows after it); text is handed on only
    once it decodes cleanly, so a character split over two tokens is never sent half.
    """

    def __init__(self, targets: TextTargets, on_text, limits: list[int] | None = None):
        self.targets, self.on_text, self.limits = targets, on_text, limits
        self.ids: list[list[int]] | None = None
        self.sent: list[str] = []
        self.done: list[bool] = []

    def put(self, value: torch.Tensor):
        if self.ids is None:                  # the first call: the prompt (here empty: the prefix is embeddings)
            self.ids = [[] for _ in range(value.shape[0])]
            self.sent, self.done = [""] * value.shape[0], [False] * value.shape[0]
            return
        for i, t in enumerate(value.reshape(-1).tolist()):
            if self.done[i]:
                continue
            if t == self.targets.eos_id:
                self.done[i] = True
                continue
            self.ids[i].append(t)
            if self.limits is not None and len(self.ids[i]) >= self.limits[i]:
                self.done[i] = True     # this row's own budget: the batch may decode on for others
            text = self.targets.decode(self.ids[i])
            if text.endswith("\ufffd") or len(text) <= len(self.sent[i]):
                continue
            new = text[len(self.sent[i]):] if text.startswith(self.sent[i]) else text
            self.sent[i] = text
            self.on_text(i, new)

    def end(self):
        pass
