"""Request bodies -> checked rows of tensors, and model outputs -> response bodies.

A request names its inputs by column (`caption`) or, where the model has one column of that
modality, by modality (`text`, `image`, `audio`). Images and audio arrive as bytes: base64 in
JSON, files in multipart. A string is never taken as a path, so a request cannot make the
server open one of its own files.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re

import numpy as np
import soundfile as sf
from PIL import Image

from ..errors import InputError
from .backend import Backend
from .settings import ServeConfig

MULTI_ROW_FIELD = re.compile(r"^(?P<name>.+)\[(?P<row>\d+)\]$")   # multipart `caption[3]`: row 3


class ApiError(Exception):
    """An answer other than 200: status, a message, and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        return {"error": self.message, "field": self.field, "status": self.status}


# The "modality" of a column a generation run reads only into its decoder prompt: plain text the
# server passes on as it is (serving/generate.py), never through an encoder.
PROMPT = "prompt"
TEXTUAL = ("text", PROMPT)


def column_names(backend: Backend) -> dict[str, str]:
    """Every accepted request key -> its column: column names, plus modality names where unambiguous."""
    names = {c: c for c, _ in backend.streams}
    for m in {m for _, m in backend.streams if m != PROMPT}:
        cols = [c for c, mm in backend.streams if mm == m]
        if len(cols) == 1 and m not in names:
            names[m] = cols[0]
    return names


def load_json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}", "body") from None


def parse_json(body: bytes, backend: Backend, limits: ServeConfig) -> list[dict]:
    """A JSON object (one row) or array of objects -> [{column: str or bytes}]."""
    return parse_rows(load_json(body), backend, limits)


def parse_rows(data, backend: Backend, limits: ServeConfig) -> list[dict]:
    """Decoded JSON: a row object or a list of them -> [{column: (str or bytes, field)}]."""
    rows = data if isinstance(data, list) else [data]
    _check_count(len(rows), limits)
    keys = column_names(backend)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ApiError(422, f"each row must be a JSON object of column -> value, got {type(row).__name__}",
                           _where(i, None, len(rows)))
        cells = {}
        for key, value in row.items():
            col = _column(keys, key, i, len(rows))
            if value is None or value == "":
                continue       # an absent cell, as an empty table cell is
            field = _where(i, key, len(rows))
            modality = dict(backend.streams)[col]
            if modality in TEXTUAL:
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise ApiError(422, f"a text value must be a string, got {type(value).__name__}", field)
                cells[col] = (str(value), field)
            else:
                if not isinstance(value, str):
                    raise ApiError(422, f"an {modality} value must be a base64 string, got {type(value).__name__}",
                                   field)
                cells[col] = (_b64(value, field), field)
        out.append(cells)
    return out


def parse_form(form, backend: Backend, limits: ServeConfig, skip: set[str] = frozenset()) -> list[dict]:
    """multipart fields `column` (row 0) or `column[i]` (row i): files for image/audio, text or files for
    text; fields named in `skip` are a route's options, not inputs."""
    keys = column_names(backend)
    by_row: dict[int, dict] = {}
    for key, value in form.multi_items():
        if key in skip:
            continue
        m = MULTI_ROW_FIELD.match(key)
        name, row = (m["name"], int(m["row"])) if m else (key, 0)
        if row >= limits.max_rows:
            raise ApiError(413, f"row index {row} is over the limit of {limits.max_rows} rows per request", key)
        col = _column(keys, name, None, 1, field=key)
        by_row.setdefault(row, {})[col] = (value, key)
    if not by_row:
        raise ApiError(422, "no input fields in the form", "body")
    n = max(by_row) + 1
    return [by_row.get(i, {}) for i in range(n)]


async def read_form_values(rows: list[dict], backend: Backend) -> list[dict]:
    """Upload objects -> bytes (text parts -> str), so the rest runs off the event loop on plain values."""
    modality = dict(backend.streams)
    for row in rows:
        for col, (value, field) in list(row.items()):
            if hasattr(value, "read"):
                data = await value.read()
                if modality[col] in TEXTUAL:
                    try:
                        data = data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ApiError(400, "a text file must be UTF-8", field) from None
                row[col] = (data, field)
            elif modality[col] not in TEXTUAL:
                raise ApiError(422, f"an {modality[col]} field must be a file upload", field)
            if row[col][0] in ("", b""):
                del row[col]       # an empty field is an absent cell, as an empty table cell is
    return rows


def decode_rows(rows: list[dict], backend: Backend, limits: ServeConfig) -> list[dict]:
    """[{column: (value, field)}] -> [{column: processed tensors}]; any bad value raises ApiError naming it."""
    modality = dict(backend.streams)
    out = []
    for i, row in enumerate(rows):
        if not row:
            raise ApiError(422, "row has no inputs (give at least one of: "
                                f"{', '.join(c for c, _ in backend.streams)})", f"rows[{i}]" if len(rows) > 1 else "body")
        out.append({col: decode_value(value, modality[col], field, backend, limits)
                    for col, (value, field) in row.items()})
    return out


def decode_value(value, modality: str, field: str, backend: Backend, limits: ServeConfig) -> dict:
    if modality == "text" and len(value) > limits.max_text_chars:
        raise ApiError(413, f"text is {len(value)} characters, over the limit of {limits.max_text_chars}", field)
    if modality == "image":
        w, h = _header(lambda: Image.open(io.BytesIO(value)).size, (0, 0))
        if w * h > limits.max_image_pixels:
            raise ApiError(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_image_pixels}",
                           field)
    if modality == "audio":
        seconds, channels = _header(lambda: _audio_header(value), (0.0, 0))
        if seconds > limits.max_audio_seconds:
            raise ApiError(413, f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds:g} s",
                           field)
        if channels > limits.max_audio_channels:
            raise ApiError(413, f"audio has {channels} channels, over the limit of {limits.max_audio_channels}", field)
    try:
        return backend.processors.by_modality[modality](value if modality == "text" else io.BytesIO(value))
    except InputError as e:
        raise ApiError(400, e.reason, field) from None
    except Exception as e:     # a decoder's own bug on a hostile file is still the file's fault
        raise ApiError(400, f"cannot decode {modality}: {type(e).__name__}: {e}", field) from None


def predictions(out: dict, backend: Backend) -> list[dict]:
    """Graph outputs -> one answer per row: LabelCodec.predictions, as every other prediction path."""
    return backend.labels.predictions(out["probabilities"]).records()


def embeddings(out: dict, rows: list[dict], backend: Backend) -> list[dict]:
    """Fused embedding, each present column's pooled tokens, and each modality's (its columns' mean)."""
    result = []
    for i, row in enumerate(rows):
        cols = {c: out[f"{c}.pooled"][i].tolist() if c in row else None for c, _ in backend.streams}
        mods = {}
        for m in dict.fromkeys(m for _, m in backend.streams):
            present = [out[f"{c}.pooled"][i] for c, mm in backend.streams if mm == m and c in row]
            mods[m] = np.mean(present, 0).tolist() if present else None
        result.append({"fused": out["pooled"][i].tolist(), "columns": cols, "modalities": mods})
    return result


def _check_count(n: int, limits: ServeConfig):
    if n == 0:
        raise ApiError(422, "no rows in the request", "body")
    if n > limits.max_rows:
        raise ApiError(413, f"{n} rows is over the limit of {limits.max_rows} rows per request", "body")


def _column(keys: dict, key: str, row: int | None, n: int, field: str | None = None) -> str:
    if key not in keys:
        raise ApiError(422, f"unknown input '{key}'; this model takes: {', '.join(keys)}",
                       field or _where(row, key, n))
    return keys[key]


def _where(row: int | None, key: str | None, n: int) -> str:
    prefix = f"rows[{row}]" if row is not None and n > 1 else ""
    if key is None:
        return prefix or "body"
    return f"{prefix}.{key}" if prefix else key


def _b64(value: str, field: str) -> bytes:
    if value.startswith("data:") and "," in value:      # a data URL: keep what follows the comma
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "not valid base64 (images and audio are sent as base64 content, never as paths)",
                       field) from None


def _audio_header(data: bytes) -> tuple[float, int]:
    info = sf.info(io.BytesIO(data))
    return (info.frames / info.samplerate if info.samplerate > 0 else 0.0), info.channels


def _header(read, default):
    """A size read from the file header, or `default` when it cannot be read (the decoder then says why)."""
    try:
        return read()
    except Exception:
        return default
