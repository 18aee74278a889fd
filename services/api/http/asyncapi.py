"""The bus's AsyncAPI document (shared/asyncapi.py) at /asyncapi.json, for upstream services that ask
the limiter and record their calls themselves."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi() -> JSONResponse:
    from shared.asyncapi import asyncapi_document  # imported when first asked for: no start needs it

    return JSONResponse(asyncapi_document())
