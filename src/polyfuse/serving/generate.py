"""Serving a generation run: POST /v1/generate, batched like /v1/predict, streamed on request.

    POST /v1/generate   a row object, an array of them, or {"inputs": row(s), "stream": true,
                        "max_new_tokens": N}; multipart fields as /v1/predict, plus `stream` and
                        `max_new_tokens` fields
    -> {"generated": [{"text": ...}, ...]}, or with stream: text/event-stream, one event per new
       piece of text {"row": i, "text": "..."} and a last {"done": true, "generated": [...]}

A run with a prompt (generate.prompt, e.g. "Question: {question} Answer:") takes the template's
columns as text keys of each row: filled into the prompt the decoder reads, and encoded as well
when they are also encoder inputs (exactly as `polyfuse predict` does from a table).

Concurrent requests share one batcher (serving/batcher.py): their rows run through one
`generate` call; a row stops at its own end-of-text and at its request's `max_new_tokens`
(the batch decodes for the largest, and greedy decoding's first N tokens do not depend on how
many follow, so a shorter request's text is the same as when it runs alone).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..config import prompt_columns
from ..generation.prompt import fill
from .batcher import BatchTimeout
from .protocol import (PROMPT, ApiError, column_names, decode_rows, load_json, parse_form, parse_rows,
                       read_form_values)
from .settings import ServeConfig

OPTIONS = ("stream", "max_new_tokens")      # request keys that are not columns


@dataclass
class Wanted:
    """What one request asks of each of its rows: a token budget and, when streaming, where text goes."""
    max_new_tokens: int
    sink: Callable[[int, str], None] | None = None     # (row within the request, new text)
    first_row: int = 0                                  # this row's index within its request
    prompt: torch.Tensor | None = None                  # (Q,) the row's decoder prompt ids (runs with a prompt)


class GenerationBackend:
    """A generation run behind the server: run([(processed row, Wanted)]) -> {"text": (B,) strings}."""
    name = "eager"
    routes = ("generate",)

    def __init__(self, run_dir: str | Path):
        from ..generation.run import Generator
        self.generator = Generator.load(run_dir, "cpu")
        self.cfg, self.processors = self.generator.cfg, self.generator.processors
        self.inputs = self.cfg.schema.streams()                     # what the encoders read
        template = self.cfg.generate.prompt
        self.prompt_columns = prompt_columns(template) if template is not None else []
        # Accepted request keys: the encoders' columns, then prompt-only ones (passed on as text).
        self.streams = self.inputs + [(c, PROMPT) for c in self.prompt_columns if c not in dict(self.inputs)]

    def prompt_of(self, row: dict) -> torch.Tensor | None:
        """A parsed request row {column: (value, field)} -> its prompt ids (None: the run has no prompt)."""
        if self.cfg.generate.prompt is None:
            return None
        text = fill(self.cfg.generate.prompt, {c: row[c][0] for c in self.prompt_columns if c in row})
        return self.generator.targets.encode_prompt(text, self.cfg.generate.max_prompt_tokens)

    def run(self, items: list) -> dict[str, np.ndarray]:
        from ..generation.run import RowStreamer
        rows, wanted = [r for r, _ in items], [w for _, w in items]
        limits = [w.max_new_tokens for w in wanted]
        streamer = None
        if any(w.sink is not None for w in wanted):
            def on_text(i, text):
                if wanted[i].sink is not None:
                    wanted[i].sink(wanted[i].first_row, text)
            streamer = RowStreamer(self.generator.targets, on_text, limits)
        prompts = [w.prompt for w in wanted] if self.cfg.generate.prompt is not None else None
        texts = self.generator.generate_items(rows, streamer=streamer, limits=limits, prompts=prompts,
                                              max_new_tokens=max(limits))
        return {"text": np.array(texts, dtype=object)}

    @torch.no_grad()
    def warm_up(self):
        """One token for one row with every column absent (the prefix is [CLS] alone): lazy init paid
        before the server reports ready. decode_rows refuses such a row from a client."""
        gen = self.generator
        parts = {c: {**self.processors.by_modality[m].collate([None]), "modality": m} for c, m in self.inputs}
        gen.model.eval()
        gen.model.generate(parts, dataclasses.replace(self.cfg.generate, max_new_tokens=1),
                           gen.targets.eos_id, gen.targets.pad_id)

    def describe(self) -> dict:
        g = self.cfg.generate
        return {"backend": self.name, "task": "generation", "columns": {c: m for c, m in self.streams},
                "prompt": self.cfg.generate.prompt,
                "decoding": {"max_new_tokens": g.max_new_tokens, "num_beams": g.num_beams,
                             "do_sample": g.do_sample, "temperature": g.temperature, "top_p": g.top_p,
                             "ctc_rescore": g.ctc_rescore}}


def add_generate_route(app, backend: GenerationBackend, settings: ServeConfig, require_key, errors: dict):
    cap = backend.cfg.generate.max_new_tokens
    streamable = backend.cfg.generate.num_beams == 1

    def options_of(get) -> tuple[bool, int]:
        stream = get("stream", False)
        if isinstance(stream, str):
            stream = stream.strip().lower() in ("1", "true", "yes", "on")
        if not isinstance(stream, bool):
            raise ApiError(422, "stream must be true or false", "stream")
        n = get("max_new_tokens", cap)
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise ApiError(422, f"max_new_tokens must be an integer, got {n!r}", "max_new_tokens") from None
        if isinstance(get("max_new_tokens", cap), bool) or not 1 <= n <= cap:
            raise ApiError(422, f"max_new_tokens must be between 1 and {cap} (this run's generate.max_new_tokens)",
                           "max_new_tokens")
        if stream and not streamable:
            raise ApiError(422, "streaming needs greedy decoding or sampling; this run decodes with beam search "
                                f"(generate.num_beams {backend.cfg.generate.num_beams})", "stream")
        return stream, n

    async def read_request(request: Request) -> tuple[list, bool, int]:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        columns = column_names(backend)
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form(max_files=settings.max_rows * len(backend.streams),
                                      max_fields=settings.max_rows * len(backend.streams) + len(OPTIONS))
            try:
                opts = {k: form[k] for k in OPTIONS if k in form and k not in columns}
                stream, n = options_of(opts.get)
                rows = await read_form_values(parse_form(form, backend, settings, skip=set(opts)), backend)
            finally:
                await form.close()
            return rows, stream, n
        if ctype not in ("application/json", ""):
            raise ApiError(415, f"content type '{ctype}' is not accepted; send application/json or "
                                "multipart/form-data", "content-type")
        data = load_json(await request.body())
        if isinstance(data, dict) and "inputs" in data and "inputs" not in columns:
            unknown = set(data) - {"inputs", *OPTIONS}
            if unknown:
                raise ApiError(422, f"unknown request keys {sorted(unknown)}; give inputs, stream, max_new_tokens",
                               sorted(unknown)[0])
            stream, n = options_of(data.get)
            data = data["inputs"]
        else:
            stream, n = options_of({}.get)
        return parse_rows(data, backend, settings), stream, n

    @app.post("/v1/generate", dependencies=[Depends(require_key)], responses=errors,
              summary="Generate text for one row or a list of rows (server-sent events with stream: true)")
    async def generate(request: Request):
        rows, stream, n = await read_request(request)
        batcher = request.app.state.batcher
        timeout = settings.timeout_ms / 1000.0
        if not stream:
            try:
                out = await batcher.submit([(r, Wanted(n, None, i)) for i, r in enumerate(rows)], timeout)
            except BatchTimeout:
                raise ApiError(504, f"no answer within {settings.timeout_ms:g} ms", "timeout") from None
            return JSONResponse({"generated": [{"text": t} for t in out["text"]], "backend": backend.name})

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def sink(row: int, text: str):          # called on the model's thread, token by token
            loop.call_soon_threadsafe(pieces.put_nowait, (row, text))

        done = asyncio.ensure_future(batcher.submit([(r, Wanted(n, sink, i)) for i, r in enumerate(rows)], timeout))
        # Wait for the first piece (or the end) before answering, so a bad input still gets its 4xx status.
        first = asyncio.ensure_future(pieces.get())
        await asyncio.wait({first, done}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            first.cancel()
            if done.exception() is not None:
                e = done.exception()
                if isinstance(e, BatchTimeout):
                    raise ApiError(504, f"no answer within {settings.timeout_ms:g} ms", "timeout")
                raise e
            first = None

        async def events():
            if first is not None:
                yield event({"row": first.result()[0], "text": first.result()[1]})
            while not (done.done() and pieces.empty()):
                get = asyncio.ensure_future(pieces.get())
                await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    row, text = get.result()
                    yield event({"row": row, "text": text})
                else:
                    get.cancel()
            try:
                out = done.result()
            except BatchTimeout:
                yield event(ApiError(504, f"no answer within {settings.timeout_ms:g} ms", "timeout").body(), "error")
                return
            except ApiError as e:
                yield event(e.body(), "error")
                return
            yield event({"done": True, "generated": [{"text": t} for t in out["text"]]})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event(data: dict, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"


def prepare_items(items: list, backend: GenerationBackend, settings: ServeConfig) -> list:
    """The batcher's prepare step for /v1/generate: decode each request's rows (prompt-only columns
    go into the prompt, not to an encoder), keep what it wants."""
    encoded = dict(backend.inputs)
    decoded = decode_rows([{c: v for c, v in r.items() if c in encoded} for r, _ in items], backend, settings)
    return [(d, dataclasses.replace(w, prompt=backend.prompt_of(r))) for d, (r, w) in zip(decoded, items)]

