"""Request bodies read raw, whatever the Content-Type says (a bare `curl -d` works everywhere),
and their OpenAPI: the routes declare the model they check with `openapi_extra=raw_body(Model)`.

The hot routes check their body by hand (`parsing.py`); the others validate it with the model
itself through `JsonBody(Model)`. `body_chunks` reads a hot route's body as it streams in.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from fastapi import Depends, Request
from pydantic import BaseModel

# Models documented this way; `app.main` adds their JSON schemas to the OpenAPI components.
RAW_BODY_MODELS: list[type[BaseModel]] = []


def raw_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra=` value declaring `model` as the route's JSON request body."""
    if model not in RAW_BODY_MODELS:
        RAW_BODY_MODELS.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def JsonBody(model: type[BaseModel], empty: str | None = None) -> Any:  # noqa: N802 - reads like a type
    """A dependency giving the body validated as `model` (pydantic ValidationError -> 422).
    `empty`: the JSON to assume for an empty body (None: an empty body is invalid)."""

    async def body(request: Request) -> BaseModel:
        raw = await request.body()
        return model.model_validate_json(raw if raw or empty is None else empty)

    return Depends(body)


async def body_chunks(chunks: AsyncIterable[bytes]) -> list[bytes]:
    """The body's chunks as they arrived, not joined: joining them, as Starlette's
    `request.body()` does, is one copy of the whole body on the event loop (0.1 s at the 32 MiB
    cap on a busy machine). `parsing.parse_body` joins them, in a thread when large."""
    return [chunk async for chunk in chunks if chunk]
