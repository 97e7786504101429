"""OpenAPI for routes that read their raw body: document the body model they check by hand."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Models documented this way; `app.main` adds their JSON schemas to the OpenAPI components.
RAW_BODY_MODELS: list[type[BaseModel]] = []


def raw_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` value declaring `model` as the route's required JSON request body."""
    if model not in RAW_BODY_MODELS:
        RAW_BODY_MODELS.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
