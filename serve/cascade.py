"""The online cascade: one OpenAI-compatible endpoint in front of the local vLLM server and a fallback API.

Each chat request goes to the local server first (greedy unless the client set a temperature, with logprobs, and
answers constrained to the label set when labels are given). Its confidence = exp(sum of the answer tokens'
logprobs) is the quantity the offline curve (offramp.evals.cascade) thresholds for a candidate evaluated through
a vLLM endpoint (offramp.evals.api.answer_logprob on the same request shape). With labels, vLLM masks the logits
to the tokens the label grammar allows *before* computing logprobs, so each step is renormalised over the allowed
tokens: P(answer | prompt, answer is a label), not lm-eval's unnormalised log-likelihood (see serve/README.md).
At or above the threshold the local answer is returned; below it the original request is forwarded to the
fallback. If the fallback fails after retries or runs past its time budget, the local answer is returned marked
degraded: the router never hangs on the fallback.

Every response names who answered: the `model` field (`local:NAME` / `fallback:NAME`) and the `x-offramp-route`
header (local | fallback | degraded). Counts per route are on /metrics for comparing the live escalation rate with
the offline estimate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.background import BackgroundTask
from tenacity import AsyncRetrying

from offramp.errors import OfframpError
from offramp.providers import PROVIDERS
from offramp.retry import policy
from offramp.serve.auth import RequireKey

log = logging.getLogger("offramp.cascade")

URL_KEY_ENV = "OFFRAMP_FALLBACK_API_KEY"  # optional key for an http(s):// fallback
ROUTES = ("local", "fallback", "degraded", "error")


@dataclass(frozen=True)
class Fallback:
    base_url: str
    model: str
    key_env: str | None

    @classmethod
    def parse(cls, spec: str) -> Fallback:
        """`openai:MODEL`, `anthropic:MODEL`, or `http(s)://host/v1#MODEL` (optional key: OFFRAMP_FALLBACK_API_KEY)."""
        if spec.startswith(("http://", "https://")):
            url, _, model = spec.partition("#")
            if not model:
                raise OfframpError(f"--fallback {spec!r}: name the model after '#', e.g. http://host:8000/v1#MODEL")
            return cls(url.rstrip("/"), model, URL_KEY_ENV)
        provider, _, model = spec.partition(":")
        if provider not in PROVIDERS or not model:
            raise OfframpError(
                f"--fallback {spec!r}: expected openai:MODEL, anthropic:MODEL or http://host:port/v1#MODEL"
            )
        known = PROVIDERS[provider]
        if not os.environ.get(known.key_env):
            raise OfframpError(
                f"--fallback {spec}: the API key must be in the environment variable {known.key_env} (not set)"
            )
        return cls(known.default_url, model, known.key_env)

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.key_env or "", "")
        return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class CascadeSettings:
    local_url: str  # http://127.0.0.1:PORT/v1
    local_model: str  # served model (or LoRA adapter) name there
    fallback: Fallback
    threshold: float
    labels: list[str] | None = None
    local_api_key: str | None = None  # sent to the local server, and required from the router's clients
    retries: int = 2  # fallback attempts after the first
    fallback_timeout_s: float = 30.0  # whole budget for the fallback, retries and backoff included
    local_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise OfframpError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.retries < 0 or self.fallback_timeout_s <= 0:
            raise OfframpError("--fallback-retries must be >= 0 and --fallback-timeout > 0")

    def local_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.local_api_key}"} if self.local_api_key else {}


def answer_confidence(choice: dict) -> float:
    """exp(sum of the generated tokens' logprobs): what offramp.evals.api.answer_logprob gives the offline curve."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        raise OfframpError("the local server returned no logprobs: it cannot be used as a cascade candidate")
    return math.exp(sum(float(t["logprob"]) for t in content))


def local_request(cfg: CascadeSettings, body: dict) -> dict:
    """What the local server is asked: the client's request, non-streaming, with logprobs, labels enforced, greedy
    unless the client chose a temperature (as the offline eval answered)."""
    local = {"temperature": 0, **body, "model": cfg.local_model, "stream": False, "logprobs": True}
    local.pop("stream_options", None)
    if cfg.labels and "structured_outputs" not in local:
        local["structured_outputs"] = {"choice": cfg.labels}
    return local


def probe_local(cfg: CascadeSettings, timeout_s: float = 120.0) -> None:
    """Before serving: the local endpoint answers, serves the model, and returns logprobs (else it cannot cascade)."""
    where = cfg.local_url
    try:
        with httpx.Client(headers=cfg.local_headers(), timeout=timeout_s, trust_env=False) as c:
            models = c.get(f"{where}/models")
            if models.status_code != 200:
                raise OfframpError(f"local endpoint {where}/models answered HTTP {models.status_code}")
            ids = [m.get("id") for m in models.json().get("data", [])]
            if cfg.local_model not in ids:
                raise OfframpError(f"local endpoint {where} does not serve {cfg.local_model!r}; it serves {ids}")
            body = local_request(cfg, {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
            r = c.post(f"{where}/chat/completions", json=body)
    except httpx.HTTPError as e:
        raise OfframpError(f"local endpoint {where} is unreachable ({type(e).__name__}: {e})") from None
    except ValueError:
        raise OfframpError(f"local endpoint {where}/models did not answer JSON") from None
    if r.status_code != 200:
        raise OfframpError(f"local endpoint {where} refused a chat request: HTTP {r.status_code} {r.text[:200]}")
    choices = r.json().get("choices") or [{}]
    if not (choices[0].get("logprobs") or {}).get("content"):
        raise OfframpError(
            f"local endpoint {where} did not return logprobs for {cfg.local_model!r}: without token log-probabilities "
            "there is no confidence to route on (vLLM returns them; check what serves this endpoint)"
        )


def _error(message: str, status: int, kind: str = "offramp_cascade", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def build_app(cfg: CascadeSettings) -> FastAPI:
    registry = CollectorRegistry()
    routes = Counter("offramp_cascade_requests", "chat requests answered, by route", ["route"], registry=registry)
    for route in ROUTES:
        routes.labels(route)  # every route shows on /metrics from the start, at 0
    failures = Counter(
        "offramp_cascade_fallback_failures", "failed fallback attempts, by reason", ["reason"], registry=registry
    )
    confidence = Histogram(
        "offramp_cascade_confidence",
        "local answer confidence P(answer | prompt)",
        buckets=[i / 20 for i in range(21)],
        registry=registry,
    )
    Gauge("offramp_cascade_threshold", "routing threshold on the local confidence", registry=registry).set(
        cfg.threshold
    )
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Local traffic stays on loopback (no proxies); the fallback honours HTTPS_PROXY like any API client.
        clients["local"] = httpx.AsyncClient(timeout=cfg.local_timeout_s, trust_env=False)
        clients["fallback"] = httpx.AsyncClient(timeout=cfg.fallback_timeout_s)
        yield
        for c in clients.values():
            await c.aclose()

    app = FastAPI(title="offramp cascade", lifespan=lifespan)

    app.add_middleware(RequireKey, key=cfg.local_api_key)  # every route but health and metrics

    async def ask_local(body: dict) -> dict:
        try:
            r = await clients["local"].post(
                f"{cfg.local_url}/chat/completions", json=local_request(cfg, body), headers=cfg.local_headers()
            )
        except httpx.HTTPError as e:
            raise OfframpError(f"local server unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise OfframpError(f"local server answered HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    async def ask_fallback(body: dict, stream: bool) -> httpx.Response | None:
        """The fallback's 200 reply (body read, or open for streaming), or None once retries or time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.fallback_timeout_s
        client = clients["fallback"]
        request = {**body, "model": cfg.fallback.model}
        tries = itertools.count(1)

        async def attempt() -> httpx.Response:
            n, left = next(tries), deadline - loop.time()
            try:
                req = client.build_request(
                    "POST",
                    f"{cfg.fallback.base_url}/chat/completions",
                    json=request,
                    headers=cfg.fallback.headers(),
                    timeout=httpx.Timeout(left),
                )
                r = await asyncio.wait_for(_send(client, req, stream), timeout=left)
            except (TimeoutError, httpx.TimeoutException):
                failures.labels("timeout").inc()
                log.warning("fallback timed out (attempt %d)", n)
                raise
            except (httpx.HTTPError, ValueError) as e:
                failures.labels(type(e).__name__).inc()
                log.warning("fallback failed (attempt %d): %s", n, type(e).__name__)
                raise
            if r.status_code != 200:
                await r.aclose()  # a wrong key or a bad request is not retried (see offramp.retry)
                failures.labels(f"http_{r.status_code}").inc()
                log.warning("fallback answered HTTP %s (attempt %d)", r.status_code, n)
            return r

        retrying = AsyncRetrying(
            **policy(
                attempts=cfg.retries + 1,
                transient=(TimeoutError, httpx.HTTPError, ValueError),
                backoff_s=0.5,
                budget_s=cfg.fallback_timeout_s,
            ),
            retry_error_callback=lambda _: None,
        )
        r = await retrying(attempt)
        return r if r is not None and r.status_code == 200 else None

    @app.get("/health")
    async def health() -> Response:
        try:
            r = await clients["local"].get(f"{cfg.local_url}/models", headers=cfg.local_headers(), timeout=5)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse({"status": "ok" if ok else "local server down"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        meta = {"local": cfg.local_model, "fallback": cfg.fallback.model, "threshold": cfg.threshold}
        return {
            "object": "list",
            "data": [{"id": "offramp-cascade", "object": "model", "owned_by": "offramp", "offramp": meta}],
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error("the body must be a JSON object with a 'messages' list", 400, "invalid_request_error")
        if (body.get("n") or 1) != 1:
            return _error("the cascade routes one answer per request (n=1)", 400, "invalid_request_error")
        stream = bool(body.get("stream"))
        try:
            local = await ask_local(body)
            conf = answer_confidence(local["choices"][0])
        except (OfframpError, KeyError, IndexError, ValueError) as e:
            routes.labels("error").inc()
            return _error(f"offramp cascade: {e}", 502, headers={"x-offramp-route": "error"})
        confidence.observe(conf)
        headers = {"x-offramp-confidence": f"{conf:.6f}"}
        if conf >= cfg.threshold:
            return _answer(local, "local", f"local:{cfg.local_model}", body, headers, routes)
        reply = await ask_fallback(body, stream)
        if reply is None:
            return _answer(local, "degraded", f"local:{cfg.local_model}", body, headers, routes)
        routes.labels("fallback").inc()
        if stream:
            model = f"fallback:{cfg.fallback.model}"
            return StreamingResponse(
                _relay(reply, model),
                media_type="text/event-stream",
                headers={**headers, "x-offramp-route": "fallback"},
                background=BackgroundTask(reply.aclose),
            )
        payload = reply.json()
        model = f"fallback:{payload.get('model') or cfg.fallback.model}"
        out = {**payload, "model": model, "offramp_route": "fallback"}
        return JSONResponse(out, headers={**headers, "x-offramp-route": "fallback"})

    return app


async def _send(client: httpx.AsyncClient, req: httpx.Request, stream: bool) -> httpx.Response:
    r = await client.send(req, stream=True)
    if r.status_code != 200 or not stream:
        await r.aread()
        if r.status_code == 200:
            r.json()  # a 200 that is not JSON counts as a failed attempt (ValueError)
    return r


def _answer(resp: dict, route: str, model: str, body: dict, headers: dict, routes: Counter) -> Response:
    """The local answer (route local or degraded), as JSON or replayed as an SSE stream."""
    routes.labels(route).inc()
    out = {**resp, "model": model, "offramp_route": route}
    if not body.get("logprobs"):  # asked for routing, not by the client
        out["choices"] = [{k: v for k, v in c.items() if k != "logprobs"} for c in out["choices"]]
    headers = {**headers, "x-offramp-route": route}
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_as_sse(out, usage), media_type="text/event-stream", headers=headers)
    return JSONResponse(out, headers=headers)


async def _as_sse(resp: dict, include_usage: bool) -> AsyncIterator[str]:
    """A complete answer replayed as an OpenAI chat.completion.chunk stream."""
    choice = resp["choices"][0]
    base = {
        "id": resp.get("id", "offramp"),
        "object": "chat.completion.chunk",
        "created": resp.get("created", int(time.time())),
        "model": resp["model"],
        "offramp_route": resp["offramp_route"],
    }
    content = (choice.get("message") or {}).get("content") or ""
    chunks = [
        {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"},
    ]
    for c in chunks:
        yield f"data: {json.dumps({**base, 'choices': [c]})}\n\n"
    if include_usage and resp.get("usage"):
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': resp['usage']})}\n\n"
    yield "data: [DONE]\n\n"


async def _relay(reply: httpx.Response, model: str) -> AsyncIterator[str]:
    """The fallback's SSE stream passed through as it arrives, each chunk's `model` naming who answered."""
    async for line in reply.aiter_lines():
        data = line[5:].strip() if line.startswith("data:") else None
        if data and data != "[DONE]":
            with suppress(ValueError, TypeError):  # not JSON: pass it on unchanged
                line = f"data: {json.dumps({**json.loads(data), 'model': model, 'offramp_route': 'fallback'})}"
        yield line + "\n"


class Router:
    """The cascade app under uvicorn: `run()` in the foreground (the CLI), or `start()`/`stop()` in a thread."""

    def __init__(self, cfg: CascadeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
        import uvicorn

        self.host, self.port = host, port
        config = uvicorn.Config(build_app(cfg), host=host, port=port, log_level="warning", lifespan="on")
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

    def start(self, timeout_s: float = 30.0) -> Router:
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OfframpError(f"the cascade router did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
