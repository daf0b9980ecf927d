"""HTTP hygiene in the front end: request bodies (declared size, read timeout) and 422 validation answers.

The size limit itself is LitServe's `max_payload_size` (it counts the bytes as they stream in); this module
adds what LitServe lacks: a 413 from the declared Content-Length before any byte is read, and a 408 for a
body that stalls (uvicorn has no body read timeout: its `timeout_keep_alive` covers idle connections only).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

_timeout = getattr(asyncio, "timeout", None)


class BodyGuardMiddleware:
    """413 for a declared Content-Length over `max_bytes`; 408 when the next body chunk takes over `timeout` s."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            detail = f"request body is over the {self.max_bytes}-byte limit (server.max_payload_bytes)"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return

        async def timed_receive() -> dict:
            try:
                if _timeout is not None:  # Python 3.11+: no extra task per receive (wait_for makes one)
                    async with _timeout(self.timeout):
                        return await receive()
                return await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                # an HTTPException: FastAPI passes it through its body parsing and answers it as is
                detail = f"request body not received within {self.timeout:g} s (server.body_timeout)"
                raise HTTPException(408, detail) from None

        await self.app(scope, timed_receive, send)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each wrong field (without echoing the input back)."""
    errors = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        errors.append({"loc": loc, "msg": error.get("msg", ""), "type": error.get("type", "")})
    detail = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def document_validation_errors(app: Any) -> None:
    """Make /openapi.json describe the 422 body `validation_error` sends (FastAPI documents its own)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string", "description": "every wrong field with what is wrong"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
