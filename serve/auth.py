"""The API key on every route, not only on vLLM's /v1 ones.

vLLM's own key check guards only paths under /v1, /v2, /inference and /cohere. Its SageMaker-style and admin
routes answer anyone: `POST /invocations` runs inference, `POST /adapters` loads a LoRA from any server path,
`DELETE /adapters/NAME` unloads the one clients use, `/tokenize`, `/load`, `/docs` and `/openapi.json` answer too.
This ASGI middleware, loaded into vLLM's server with `--middleware offramp.serve.auth.RequireKey` and into the
cascade router, asks for the key on every path but the few that only say whether the server is up.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# Liveness and scraping only: nothing here runs a model, changes state or names a file.
OPEN_PATHS = frozenset({"/health", "/ping", "/metrics", "/version"})
KEY_ENV = "VLLM_API_KEY"  # where VllmServer puts the key for its server: the environment, never argv


def bearer_matches(authorization: str | None, key: str) -> bool:
    """`Authorization: Bearer KEY`, the scheme compared case-insensitively (RFC 7235), the key in constant time."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(
        hashlib.sha256(token.strip().encode()).digest(), hashlib.sha256(key.encode()).digest()
    )


class RequireKey:
    """Refuse, with 401, any request without the key, except to OPEN_PATHS (and CORS preflight)."""

    def __init__(self, app: ASGIApp, key: str | None = None) -> None:
        self.app = app
        self.key = key if key is not None else os.environ.get(KEY_ENV) or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if path.rstrip("/") in OPEN_PATHS or bearer_matches(Headers(scope=scope).get("authorization"), self.key):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": {"message": "missing or wrong API key", "type": "unauthorized"}}, 401)
        await response(scope, receive, send)
