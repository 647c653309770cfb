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

A sequence-classification server (vLLM's pooling runner, `local_kind="classify"`) gets the same chat face: the
messages go to its `POST /classify` (vLLM renders them with the chat template and the generation prompt, as
`offramp finetune --head classify` trained), the label with the highest probability is the assistant message,
its probability is the confidence, and every label's probability is in the response's `offramp_probs`. One
forward pass, no decoding.

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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.background import BackgroundTask
from tenacity import AsyncRetrying

from offramp.errors import OfframpError
from offramp.retry import policy
from offramp.serve.auth import RequireKey
from offramp.serve.router import AppServer, Upstream, add_metrics, openai_error, sse_events

log = logging.getLogger("offramp.cascade")

URL_KEY_ENV = "OFFRAMP_FALLBACK_API_KEY"  # optional key for an http(s):// fallback
ROUTES = ("local", "fallback", "degraded", "error")


class Fallback(Upstream):
    """Where the cascade escalates to: always a named model."""

    @classmethod
    def parse(cls, spec: str) -> Fallback:  # type: ignore[override]
        """`openai:MODEL`, `anthropic:MODEL`, or `http(s)://host/v1#MODEL` (optional key: OFFRAMP_FALLBACK_API_KEY);
        a named API's base URL honours its OPENAI_BASE_URL / ANTHROPIC_BASE_URL (offramp/providers.py)."""
        return super().parse(spec, flag="--fallback", url_key_env=URL_KEY_ENV, model=True)  # type: ignore[return-value]


@dataclass(frozen=True)
class CascadeSettings:
    local_url: str  # http://127.0.0.1:PORT/v1
    local_model: str  # served model (or LoRA adapter) name there
    fallback: Fallback | None  # None: the local model answers everything (a classifier's chat face)
    threshold: float
    labels: list[str] | None = None
    local_api_key: str | None = None  # sent to the local server, and required from the router's clients
    retries: int = 2  # fallback attempts after the first
    fallback_timeout_s: float = 30.0  # whole budget for the fallback, retries and backoff included
    local_timeout_s: float = 120.0
    local_kind: str = "chat"  # chat: /v1/chat/completions with logprobs; classify: a pooling server's /classify

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise OfframpError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.retries < 0 or self.fallback_timeout_s <= 0:
            raise OfframpError("--fallback-retries must be >= 0 and --fallback-timeout > 0")
        if self.local_kind not in ("chat", "classify"):
            raise OfframpError(f"unknown local server kind {self.local_kind!r}")

    @property
    def local_root(self) -> str:
        """The server's root (vLLM's /classify is not under /v1)."""
        return self.local_url.removesuffix("/v1")

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


def classify_request(cfg: CascadeSettings, body: dict) -> dict:
    """What a pooling server's /classify is asked: the client's messages, rendered by the served model's chat
    template with the generation prompt (the prompt `finetune --head classify` trained on)."""
    return {"model": cfg.local_model, "messages": body["messages"], "add_generation_prompt": True}


def classification_as_chat(cfg: CascadeSettings, reply: dict) -> tuple[dict, float]:
    """/classify's answer for one conversation as a chat.completion (the label as the assistant message, every
    label's probability in `offramp_probs`) and its confidence: the chosen label's probability."""
    data = reply["data"][0]
    probs = [float(p) for p in data["probs"]]
    best = max(range(len(probs)), key=probs.__getitem__)
    names = cfg.labels if cfg.labels and len(cfg.labels) == len(probs) else [str(i) for i in range(len(probs))]
    label = data.get("label") or names[best]  # vLLM names it from the checkpoint's id2label
    by_label = dict(zip(names, probs, strict=True))
    usage = reply.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    # The label as one "token" whose logprob is log P(label): exp(sum of logprobs) is the confidence, as for a
    # generative candidate, so offline curves (offramp eval) and this router threshold the same quantity.
    logprobs = {"content": [{"token": label, "logprob": math.log(max(probs[best], 1e-300)), "top_logprobs": []}]}
    choice = {"index": 0, "message": {"role": "assistant", "content": label}, "logprobs": logprobs}
    chat = {
        "id": reply.get("id", "offramp-classify"),
        "object": "chat.completion",
        "created": reply.get("created", int(time.time())),
        "model": cfg.local_model,
        "choices": [{**choice, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
        "offramp_probs": by_label,
    }
    return chat, probs[best]


def local_kind(url: str, api_key: str | None, timeout_s: float = 30.0) -> str:
    """`classify` where the server at `url` (…/v1) serves vLLM's /classify (the pooling runner), else `chat`."""
    root = url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(headers=headers, timeout=timeout_s, trust_env=False) as c:
            r = c.get(f"{root}/openapi.json")
    except httpx.HTTPError:
        return "chat"  # probe_local reports the unreachable server
    try:
        paths = r.json().get("paths", {}) if r.status_code == 200 else {}
    except ValueError:
        paths = {}
    return "classify" if "/classify" in paths else "chat"


def probe_local(cfg: CascadeSettings, timeout_s: float = 120.0) -> None:
    """Before serving: the local endpoint answers, serves the model, and returns a confidence (logprobs or label
    probabilities), else it cannot cascade."""
    where = cfg.local_url
    hello = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    try:
        with httpx.Client(headers=cfg.local_headers(), timeout=timeout_s, trust_env=False) as c:
            models = c.get(f"{where}/models")
            if models.status_code != 200:
                raise OfframpError(f"local endpoint {where}/models answered HTTP {models.status_code}")
            ids = [m.get("id") for m in models.json().get("data", [])]
            if cfg.local_model not in ids:
                raise OfframpError(f"local endpoint {where} does not serve {cfg.local_model!r}; it serves {ids}")
            if cfg.local_kind == "classify":
                r = c.post(f"{cfg.local_root}/classify", json=classify_request(cfg, hello))
            else:
                r = c.post(f"{where}/chat/completions", json=local_request(cfg, hello))
    except httpx.HTTPError as e:
        raise OfframpError(f"local endpoint {where} is unreachable ({type(e).__name__}: {e})") from None
    except ValueError:
        raise OfframpError(f"local endpoint {where}/models did not answer JSON") from None
    if cfg.local_kind == "classify":
        _check_classifier(cfg, r)
        return
    if r.status_code != 200:
        raise OfframpError(f"local endpoint {where} refused a chat request: HTTP {r.status_code} {r.text[:200]}")
    choices = r.json().get("choices") or [{}]
    if not (choices[0].get("logprobs") or {}).get("content"):
        raise OfframpError(
            f"local endpoint {where} did not return logprobs for {cfg.local_model!r}: without token log-probabilities "
            "there is no confidence to route on (vLLM returns them; check what serves this endpoint)"
        )


def _check_classifier(cfg: CascadeSettings, r: httpx.Response) -> None:
    if r.status_code != 200:
        raise OfframpError(f"local classifier {cfg.local_root}/classify refused a request: HTTP {r.status_code} "
                           f"{r.text[:200]}")  # fmt: skip
    n = int(r.json()["data"][0]["num_classes"])
    if cfg.labels and len(cfg.labels) != n:
        raise OfframpError(f"--labels lists {len(cfg.labels)} labels; the classifier's head has {n}")


def _error(message: str, status: int, kind: str = "offramp_cascade", headers: dict | None = None) -> JSONResponse:
    return openai_error(message, status, kind, headers)


class CascadeMetrics:
    """The router's counters on its own registry (one per app, so that two routers in a process do not clash)."""

    def __init__(self, threshold: float) -> None:
        self.registry = CollectorRegistry()
        self.routes = Counter(
            "offramp_cascade_requests", "chat requests answered, by route", ["route"], registry=self.registry
        )
        for route in ROUTES:
            self.routes.labels(route)  # every route shows on /metrics from the start, at 0
        self.failures = Counter(
            "offramp_cascade_fallback_failures",
            "failed fallback attempts, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.confidence = Histogram(
            "offramp_cascade_confidence",
            "local answer confidence P(answer | prompt)",
            buckets=[i / 20 for i in range(21)],
            registry=self.registry,
        )
        gauge = Gauge("offramp_cascade_threshold", "routing threshold on the local confidence", registry=self.registry)
        gauge.set(threshold)


class Cascade:
    """One request's path through the cascade: the local model, then (if unsure) the fallback."""

    def __init__(self, cfg: CascadeSettings, metrics: CascadeMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        # Local traffic stays on loopback (no proxies); the fallback honours HTTPS_PROXY like any API client.
        self.clients["local"] = httpx.AsyncClient(timeout=self.cfg.local_timeout_s, trust_env=False)
        self.clients["fallback"] = httpx.AsyncClient(timeout=self.cfg.fallback_timeout_s)
        yield
        for c in self.clients.values():
            await c.aclose()

    async def ask_local(self, body: dict) -> tuple[dict, float]:
        """The local answer as a chat.completion, and its confidence."""
        cfg = self.cfg
        if cfg.local_kind == "classify":
            url, request = f"{cfg.local_root}/classify", classify_request(cfg, body)
        else:
            url, request = f"{cfg.local_url}/chat/completions", local_request(cfg, body)
        try:
            r = await self.clients["local"].post(url, json=request, headers=cfg.local_headers())
        except httpx.HTTPError as e:
            raise OfframpError(f"local server unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise OfframpError(f"local server answered HTTP {r.status_code}: {r.text[:300]}")
        if cfg.local_kind == "classify":
            return classification_as_chat(cfg, r.json())
        reply = r.json()
        return reply, answer_confidence(reply["choices"][0])

    async def ask_fallback(self, body: dict, stream: bool) -> httpx.Response | None:
        """The fallback's 200 reply (body read, or open for streaming), or None once retries or time ran out."""
        cfg, failures = self.cfg, self.metrics.failures
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.fallback_timeout_s
        client = self.clients["fallback"]
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

    async def chat(self, request: Request) -> Response:
        cfg, routes = self.cfg, self.metrics.routes
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
            local, conf = await self.ask_local(body)
        except (OfframpError, KeyError, IndexError, ValueError) as e:
            routes.labels("error").inc()
            return _error(f"offramp cascade: {e}", 502, headers={"x-offramp-route": "error"})
        self.metrics.confidence.observe(conf)
        headers = {"x-offramp-confidence": f"{conf:.6f}"}
        if cfg.fallback is None or conf >= cfg.threshold:
            return _answer(local, "local", f"local:{cfg.local_model}", body, headers, routes)
        reply = await self.ask_fallback(body, stream)
        if reply is None:
            return _answer(local, "degraded", f"local:{cfg.local_model}", body, headers, routes)
        routes.labels("fallback").inc()
        if stream:
            return StreamingResponse(
                _relay(reply, f"fallback:{cfg.fallback.model}"),
                media_type="text/event-stream",
                headers={**headers, "x-offramp-route": "fallback"},
                background=BackgroundTask(reply.aclose),
            )
        payload = reply.json()
        model = f"fallback:{payload.get('model') or cfg.fallback.model}"
        out = {**payload, "model": model, "offramp_route": "fallback"}
        return JSONResponse(out, headers={**headers, "x-offramp-route": "fallback"})

    async def pooling_passthrough(self, request: Request) -> Response:
        """vLLM's /classify (every label's probability) and /pooling (what `vllm bench serve` drives) passed
        through under the router's key, so a benchmark of this endpoint counts the router's hop too."""
        cfg = self.cfg
        body = await request.body()  # passed on as it came: vLLM validates it (and a parse here costs the hop CPU)
        url = f"{cfg.local_root}{request.url.path}"
        headers = {**cfg.local_headers(), "content-type": "application/json"}
        try:
            r = await self.clients["local"].post(url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return _error(f"offramp: local classifier unreachable ({type(e).__name__})", 502)
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    async def local_models(self) -> list[dict]:
        """The local server's own /v1/models entries (id, root), or none when it does not answer."""
        try:
            r = await self.clients["local"].get(f"{self.cfg.local_url}/models", headers=self.cfg.local_headers())
            return r.json().get("data", []) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return []

    async def health(self) -> Response:
        cfg = self.cfg
        try:
            r = await self.clients["local"].get(f"{cfg.local_url}/models", headers=cfg.local_headers(), timeout=5)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        return JSONResponse({"status": "ok" if ok else "local server down"}, status_code=200 if ok else 503)


def build_app(cfg: CascadeSettings) -> FastAPI:
    metrics = CascadeMetrics(cfg.threshold)
    cascade = Cascade(cfg, metrics)
    app = FastAPI(title="offramp cascade", lifespan=cascade.lifespan)
    app.add_middleware(RequireKey, key=cfg.local_api_key)  # every route but health and metrics
    add_metrics(app, metrics.registry)
    app.get("/health")(cascade.health)
    app.post("/v1/chat/completions")(cascade.chat)
    if cfg.local_kind == "classify":
        app.post("/classify")(cascade.pooling_passthrough)
        app.post("/pooling")(cascade.pooling_passthrough)

    @app.get("/v1/models")
    async def models() -> dict:
        fallback = cfg.fallback.model if cfg.fallback else None
        meta = {"local": cfg.local_model, "fallback": fallback, "threshold": cfg.threshold, "kind": cfg.local_kind}
        data = [{"id": "offramp-cascade", "object": "model", "owned_by": "offramp", "offramp": meta}]
        if cfg.local_kind == "classify":  # first, with its checkpoint as root: what `offramp bench` drives (/pooling)
            data = [*await cascade.local_models(), *data]
        return {"object": "list", "data": data}

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
    async for event in sse_events(reply.aiter_bytes()):
        lines = event.decode("utf-8", "replace").splitlines(keepends=True)
        for i, line in enumerate(lines):
            data = line[5:].strip() if line.startswith("data:") else None
            if data and data != "[DONE]":
                with suppress(ValueError, TypeError):  # not JSON: pass it on unchanged
                    chunk = {**json.loads(data), "model": model, "offramp_route": "fallback"}
                    lines[i] = f"data: {json.dumps(chunk)}\n"
        yield "".join(lines)


class Router(AppServer):
    """The cascade app under uvicorn: `run()` in the foreground (the CLI), or `start()`/`stop()` in a thread."""

    def __init__(self, cfg: CascadeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
        super().__init__(build_app(cfg), host, port, name="the cascade router")
