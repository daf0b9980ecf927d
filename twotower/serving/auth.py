"""API keys: the client key (LIT_SERVER_API_KEY) for the model routes, the admin key (TWOTOWER_ADMIN_API_KEY)
for /admin/reload. Keys are read from the environment when a request arrives and compared in constant time.

We do not use LitServe's own `api_key_auth`: it compares with `!=` (timing leak) and knows one key only.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

CLIENT_KEY_ENV = "LIT_SERVER_API_KEY"
ADMIN_KEY_ENV = "TWOTOWER_ADMIN_API_KEY"
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
# Documentation and service routes that need the client key when one is set (server.protect_docs)
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/litserve/info")


def client_key() -> str | None:
    return os.environ.get(CLIENT_KEY_ENV) or None


def admin_key() -> str | None:
    return os.environ.get(ADMIN_KEY_ENV) or None


def key_matches(given: str | None, expected: str | None) -> bool:
    """True when both are set and equal; constant time in the key's content."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def require_client(x_api_key: str | None = Depends(API_KEY_HEADER)) -> None:
    """Dependency: the client key (or the admin key) when LIT_SERVER_API_KEY is set, else open."""
    expected = client_key()
    if expected and not (key_matches(x_api_key, expected) or is_admin(x_api_key)):
        raise HTTPException(401, "invalid or missing X-API-Key header")


def require_admin(x_api_key: str | None = Depends(API_KEY_HEADER)) -> None:
    """Dependency: the admin key, always. Without TWOTOWER_ADMIN_API_KEY the admin routes are off (403)."""
    expected = admin_key()
    if not expected:
        raise HTTPException(403, f"admin endpoints are disabled: set {ADMIN_KEY_ENV} to enable them")
    if not key_matches(x_api_key, expected):
        raise HTTPException(401, "invalid or missing X-API-Key header (the admin key)")


def is_admin(x_api_key: str | None) -> bool:
    return key_matches(x_api_key, admin_key())


class DocsAuthMiddleware:
    """401 for the documentation routes (DOC_PATHS) without the client key, when one is set.

    FastAPI registers /docs and /openapi.json itself, without a dependency hook, so this checks the path
    before the app sees the request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        expected = client_key()
        if scope["type"] == "http" and expected and scope["path"] in DOC_PATHS:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"x-api-key", b"").decode("latin-1")
            if not (key_matches(given, expected) or is_admin(given)):
                answer = JSONResponse({"detail": "invalid or missing X-API-Key header"}, status_code=401)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)
