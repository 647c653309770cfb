"""What offramp's OpenAI-compatible proxies share: the cascade router (serve/cascade.py) and the capture proxy
(offramp/traffic/capture.py) are one stack (FastAPI + httpx under uvicorn), with these pieces in common:

- `Upstream`: where a proxy forwards to, parsed from `openai[:MODEL]`, `anthropic[:MODEL]` (Anthropic's
  OpenAI-compatible API) or `http(s)://host/v1[#MODEL]`; the base URL honours OPENAI_BASE_URL / ANTHROPIC_BASE_URL
  (offramp/providers.py), and the key is read from the environment at each request, never stored;
- `sse_events`: an upstream SSE byte stream cut into whole events, bytes unchanged;
- `openai_error`, `add_metrics`: an OpenAI-shaped error body, and /metrics from a prometheus registry;
- `AppServer`: an app under uvicorn, in the foreground (the CLI) or in a thread (tests, benchmarks).
Clients authenticate with offramp.serve.auth.RequireKey.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from offramp.errors import OfframpError
from offramp.providers import PROVIDERS

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # an SSE event ends with a blank line (any of the three EOLs)


@dataclass(frozen=True)
class Upstream:
    base_url: str  # ends in /v1, no trailing slash
    model: str | None  # the model requests are sent to; None: each request's own model, unchanged
    key_env: str | None  # env var holding the upstream's key (read per request, never kept)
    provider: str | None = field(default=None, compare=False)  # openai / anthropic / None for a URL

    @classmethod
    def parse(cls, spec: str, *, flag: str, url_key_env: str, model: bool) -> Upstream:
        """`openai:MODEL` / `anthropic:MODEL` / `http(s)://host/v1#MODEL` when `model` is True (the model is
        required); `openai` / `anthropic` / `http(s)://host/v1` when False (each request keeps its own model)."""
        forms = "openai:MODEL, anthropic:MODEL or http://host:port/v1#MODEL" if model else "openai, anthropic or URL"
        if spec.startswith(("http://", "https://")):
            url, _, name = spec.partition("#")
            if model and not name:
                raise OfframpError(f"{flag} {spec!r}: name the model after '#', e.g. http://host:8000/v1#MODEL")
            if not model and name:
                raise OfframpError(f"{flag} {spec!r}: requests keep their own model; drop '#{name}'")
            return cls(url.rstrip("/"), name or None, url_key_env)
        provider, _, name = spec.partition(":")
        if provider not in PROVIDERS or (model and not name):
            raise OfframpError(f"{flag} {spec!r}: expected {forms}")
        if not model and name:
            raise OfframpError(f"{flag} {spec!r}: requests keep their own model; give {flag} {provider}")
        known = PROVIDERS[provider]
        if not os.environ.get(known.key_env):
            raise OfframpError(
                f"{flag} {spec}: the API key must be in the environment variable {known.key_env} (not set)"
            )
        return cls(known.base_url(), name or None, known.key_env, provider)

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.key_env or "", "")
        return {"Authorization": f"Bearer {key}"} if key else {}


def openai_error(message: str, status: int, kind: str, headers: dict | None = None) -> Any:
    """An error in the OpenAI body shape, so that SDK clients raise their usual APIStatusError with the message."""
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def add_metrics(app: Any, registry: Any) -> None:
    """GET /metrics: the registry in Prometheus' text format (left open by RequireKey, like /health)."""
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.get("/metrics", response_class=Response)
    async def metrics():  # no return annotation: FastAPI would resolve it against this module, where fastapi is lazy
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Whole SSE events (each with the blank line that ends it), bytes as received; a tail without its blank line
    (a stream cut short) comes last. A client can use no part of an event before its end, so relaying whole
    events delays nothing it could read."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        start = 0
        for m in _EVENT_END.finditer(buf):
            yield buf[start : m.end()]
            start = m.end()
        buf = buf[start:]
    if buf:
        yield buf


def sse_data(event: bytes) -> str | None:
    """The `data:` payload of one SSE event (multi-line data joined by newlines), or None where it has none."""
    lines = [ln[5:].removeprefix(" ") for ln in event.decode("utf-8", "replace").splitlines() if ln.startswith("data:")]
    return "\n".join(lines) if lines else None


class AppServer:
    """An ASGI app under uvicorn: `run()` in the foreground (the CLI), or `start()`/`stop()` in a thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000, name: str = "the server") -> None:
        import uvicorn

        self.host, self.port, self.name = host, port, name
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def run(self, keep_going: Callable[[], bool] | None = None, on_ready: Callable[[], None] | None = None) -> None:
        """Serve in the foreground until Ctrl-C / SIGTERM, or until `keep_going()` turns false (checked every
        second); `on_ready()` runs once the socket is listening."""

        def watch() -> None:
            while not self.server.started and not self.server.should_exit:
                time.sleep(0.05)
            if on_ready is not None and self.server.started:
                on_ready()
            while keep_going is not None and not self.server.should_exit:
                if not keep_going():
                    self.server.should_exit = True
                time.sleep(1.0)

        threading.Thread(target=watch, daemon=True).start()
        self.server.run()

    def start(self, timeout_s: float = 30.0) -> AppServer:
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OfframpError(f"{self.name} did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
