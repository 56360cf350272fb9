"""Pydantic models of the server's answers, for the OpenAPI document (/docs) only.

Routes hand back JSONResponse objects built from plain dicts, so FastAPI neither validates nor
re-serializes them through these models: the bytes on the wire stay as they were (a regression
answer has no "probabilities" key rather than a null one) and no per-request copy is made.
"""
from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error answer (4xx, 5xx)."""
    error: str = Field(description="what is wrong, in words")
    field: str | None = Field(description="the request field it is about: 'image', 'rows[1].audio', 'body', "
                                          "'authorization', 'timeout'; null when none")
    status: int = Field(description="the HTTP status code, repeated")


class Prediction(BaseModel):
    prediction: str | float = Field(description="class name, 'a|b' for multi-label, a number for regression")
    probabilities: dict[str, float] | None = Field(
        None, description="class -> probability (classification, multi-label); absent for regression")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per request row, in order")
    backend: str = Field(description="'eager' or 'onnx:<file>'")


class Embedding(BaseModel):
    fused: list[float] = Field(description="the fused embedding (d_model floats)")
    columns: dict[str, list[float] | None] = Field(description="each column's pooled tokens; null where absent")
    modalities: dict[str, list[float] | None] = Field(
        description="each modality's embedding (the mean of its present columns); null where absent")


class EmbedResponse(BaseModel):
    embeddings: list[Embedding] = Field(description="one per request row, in order")
    backend: str


class Status(BaseModel):
    status: str = Field(description="'ok' (/healthz); 'ready' or 'not ready' (/readyz)")


ERROR_MEANINGS = {
    400: "undecodable input: corrupt image/audio, bad base64, bad JSON, malformed multipart",
    401: "an API key is configured and the request lacks it (or it is wrong)",
    413: "body, rows, text, image pixels, audio seconds or channels over their limits",
    415: "a content type other than JSON or a form",
    422: "unknown input name, wrong value type, a row with no inputs, an empty list",
    504: "no answer within the per-request timeout",
}


def error_responses(*statuses: int) -> dict:
    """FastAPI `responses=` entries: these statuses, each answered with ErrorBody."""
    return {s: {"model": ErrorBody, "description": ERROR_MEANINGS[s]} for s in statuses}


def error_reference(status: int) -> dict:
    """The same entry for a route whose own answer is not JSON (/metrics): FastAPI would file a `model`
    under the route's media type, so this points at ErrorBody (registered by the other routes) as JSON."""
    return {status: {"description": ERROR_MEANINGS[status],
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}}
