"""The online cascade: one OpenAI-compatible endpoint in front of the local vLLM server and a fallback API.

Each chat request goes to the local server first (with logprobs, and answers constrained to the label set when
labels are given). Its confidence, P(answer | prompt) = exp(sum of the answer tokens' logprobs), is the same
quantity the offline curve (offramp.evals.cascade) picks its threshold on. At or above the threshold the local
answer is returned; below it the original request is forwarded to the fallback. If the fallback fails after
retries, the local answer is returned marked degraded: the router never hangs on the fallback.

Every response names who answered: the `model` field and the `x-offramp-route` header (local | fallback |
degraded). Counts per route are on /metrics for comparing the live escalation rate with the offline estimate.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from offramp.errors import OfframpError

PROVIDERS = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
}


@dataclass(frozen=True)
class Fallback:
    base_url: str
    model: str
    key_env: str | None

    @classmethod
    def parse(cls, spec: str) -> Fallback:
        """`openai:MODEL`, `anthropic:MODEL`, or `http(s)://host/v1#MODEL` (key from OFFRAMP_FALLBACK_API_KEY)."""
        if spec.startswith(("http://", "https://")):
            url, _, model = spec.partition("#")
            return cls(url.rstrip("/"), model or "default", "OFFRAMP_FALLBACK_API_KEY")
        provider, _, model = spec.partition(":")
        if provider not in PROVIDERS or not model:
            raise OfframpError(
                f"fallback {spec!r}: expected openai:MODEL, anthropic:MODEL or http://host:port/v1#MODEL"
            )
        url, env = PROVIDERS[provider]
        if not os.environ.get(env):
            raise OfframpError(f"fallback {spec!r} needs the API key in the environment variable {env}")
        return cls(url, model, env)

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.key_env or "", "")
        return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class CascadeSettings:
    local_url: str  # http://127.0.0.1:PORT/v1
    local_model: str
    fallback: Fallback
    threshold: float
    labels: list[str] | None = None
    retries: int = 2
    fallback_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise OfframpError(f"--threshold must be in [0, 1], got {self.threshold}")


def answer_confidence(choice: dict) -> float:
    """P(answer) from the per-token logprobs vLLM returns for the generated content."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        raise OfframpError("the local server returned no logprobs: it cannot be used as a cascade candidate")
    return math.exp(sum(t["logprob"] for t in content))


def build_app(cfg: CascadeSettings) -> FastAPI:
    app = FastAPI(title="offramp cascade")
    registry = CollectorRegistry()
    routes = Counter("offramp_cascade_requests", "requests by route", ["route"], registry=registry)
    confidence = Histogram(
        "offramp_cascade_confidence", "local answer confidence", buckets=[i / 10 for i in range(11)], registry=registry
    )
    client = httpx.AsyncClient(timeout=httpx.Timeout(cfg.fallback_timeout_s, connect=5.0))

    async def ask_local(body: dict) -> dict:
        local = {**body, "model": cfg.local_model, "stream": False, "logprobs": True}
        local.pop("stream_options", None)
        if cfg.labels and "structured_outputs" not in local:
            local["structured_outputs"] = {"choice": cfg.labels}
        r = await client.post(f"{cfg.local_url}/chat/completions", json=local, timeout=120)
        if r.status_code != 200:
            raise OfframpError(f"local server answered {r.status_code}: {r.text[:200]}")
        return r.json()

    async def ask_fallback(body: dict) -> httpx.Response | None:
        """The fallback's reply (a streaming response when asked), or None after the retries failed."""
        fb = {**body, "model": cfg.fallback.model}
        for attempt in range(cfg.retries + 1):
            try:
                req = client.build_request(
                    "POST", f"{cfg.fallback.base_url}/chat/completions", json=fb, headers=cfg.fallback.headers()
                )
                r = await client.send(req, stream=bool(body.get("stream")))
                if r.status_code == 200:
                    return r
                await r.aclose()
                if r.status_code not in (429, 500, 502, 503, 504):
                    return None
            except httpx.HTTPError:
                pass
            await asyncio.sleep(min(0.5 * 2**attempt, 4))
        return None

    def routed(resp: dict, route: str, model: str) -> dict:
        return {**resp, "model": model, "offramp_route": route}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "offramp-cascade", "object": "model", "owned_by": "offramp"}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        try:
            local = await ask_local(body)
            conf = answer_confidence(local["choices"][0])
        except OfframpError as e:
            return JSONResponse({"error": {"message": str(e), "type": "offramp_cascade"}}, status_code=502)
        confidence.observe(conf)
        route, model, payload = "local", f"local:{cfg.local_model}", local
        if conf < cfg.threshold:
            reply = await ask_fallback(body)
            if reply is not None and body.get("stream"):
                routes.labels("fallback").inc()
                return StreamingResponse(
                    reply.aiter_raw(),
                    media_type="text/event-stream",
                    headers={"x-offramp-route": "fallback", "x-offramp-confidence": f"{conf:.4f}"},
                    background=_close(reply),
                )
            if reply is not None:
                route, model, payload = "fallback", f"fallback:{cfg.fallback.model}", reply.json()
            else:
                route = "degraded"
        routes.labels(route).inc()
        headers = {"x-offramp-route": route, "x-offramp-confidence": f"{conf:.4f}"}
        out = routed(payload, route, model)
        if body.get("stream"):
            return StreamingResponse(_as_sse(out), media_type="text/event-stream", headers=headers)
        return JSONResponse(out, headers=headers)

    @app.on_event("shutdown")
    async def _shutdown() -> None:
        await client.aclose()

    return app


def _close(reply: httpx.Response):
    from starlette.background import BackgroundTask

    return BackgroundTask(reply.aclose)


async def _as_sse(resp: dict):
    """A complete answer replayed as an OpenAI chat.completion.chunk stream."""
    choice = resp["choices"][0]
    base = {
        "id": resp.get("id", "offramp"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": resp["model"],
        "offramp_route": resp["offramp_route"],
    }
    content = (choice.get("message") or {}).get("content") or ""
    first = {"index": 0, "delta": {"role": "assistant", "content": content}}
    last = {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}
    for c in (first, last):
        yield f"data: {json.dumps({**base, 'choices': [c]})}\n\n"
    yield "data: [DONE]\n\n"


def run_router(cfg: CascadeSettings, host: str = "127.0.0.1", port: int = 8100) -> None:
    import uvicorn

    uvicorn.run(build_app(cfg), host=host, port=port, log_level="warning")
