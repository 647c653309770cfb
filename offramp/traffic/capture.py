"""`offramp capture`: a recording proxy in front of the API a team pays for today.

It serves POST /v1/chat/completions and /v1/completions (streaming or not), and GET /v1/models, /health, /metrics.
Each request is forwarded unchanged (the body's bytes, the client's headers but its Authorization, which is
offramp's own --api-key, replaced by the upstream's key from the environment) and the client gets exactly what the
upstream answered: its status, its body, and for a stream the same events in the same order, bytes as received.
Nothing is retried: a 429 or a 500 reaches the client as it was, and the client's SDK retries as it would have.
An upstream that cannot be reached is a 502 and one that does not answer in time a 504, both OpenAI-shaped.

Per call it records (offramp/traffic/store.py) the time, latency, status, model, request, the response (for a
stream: the assembled answer and the last chunk carrying usage), the usage the upstream reported (NULL where it
reported none: a stream asked without `stream_options.include_usage` is not altered to get it), the list-price
cost, and a tag (X-Offramp-Tag, else the request's metadata.tag or user).

Durability: the record is committed (SQLite: fsynced) BEFORE the answer's last bytes leave: a non-streamed body
is sent only after the write returned, a stream's `data: [DONE]` (or, without one, the end of the response) only
after it. So every call whose answer reached the client is in the store, also after `kill -9` of the proxy. The
write runs in a worker thread, so other requests keep flowing meanwhile. If it fails, the call still succeeds
and offramp_capture_record_failures_total counts it.

Shadow mode sends each answered request again, after the client has its answer, to a local OpenAI-compatible
endpoint (a bounded queue and a fixed number of workers: when the queue is full the shadow is dropped and
counted, never waited for) and stores the local answer in the call's `shadow` column by updating the row. The row
is written first and updated later because the alternative, one write once both answers are in, would hold the
client's answer until the local model answered, or leave the call unrecorded meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter

from offramp.errors import OfframpError
from offramp.serve.auth import RequireKey
from offramp.serve.router import AppServer, Upstream, add_metrics, openai_error, sse_data, sse_events
from offramp.traffic.importers import answer_of, tag_of, usage_of
from offramp.traffic.redact import redact, redact_text
from offramp.traffic.store import Call, Store, canonical

log = logging.getLogger("offramp.capture")

UPSTREAM_KEY_ENV = "OFFRAMP_UPSTREAM_API_KEY"  # the key for a URL upstream (a named API uses its own variable)
SHADOW_KEY_ENV = "OFFRAMP_SHADOW_API_KEY"  # optional key for the shadow endpoint
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# Not passed on to the upstream: our own auth and tag, and what httpx sets for its own connection.
DROP_REQUEST = frozenset(
    {"host", "authorization", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}
    | {"accept-encoding", "x-offramp-tag", "proxy-authorization", "proxy-connection"}
)
# Not passed back: framing that belongs to each hop (the body is relayed decoded, so its encoding goes too).
DROP_REPLY = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"})
DROP_REPLY |= {"date", "server"}


@dataclass(frozen=True)
class CaptureSettings:
    upstream: Upstream
    api_key: str | None = None  # clients must send it (Authorization: Bearer …); None: no check
    redact: bool = False
    shadow: Upstream | None = None  # a local endpoint with its model: URL#MODEL
    timeout_s: float = 600.0  # the whole upstream call (the openai SDK's own default)
    shadow_workers: int = 2
    shadow_queue: int = 256

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.shadow_workers < 1 or self.shadow_queue < 1:
            raise OfframpError("--timeout must be > 0, --shadow-workers and --shadow-queue at least 1")


class CaptureMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "offramp_capture_requests",
            "proxied calls, by the status the client got",
            ["status"],
            registry=self.registry,
        )
        self.record_failures = Counter(
            "offramp_capture_record_failures",
            "calls answered but not recorded (the store failed)",
            registry=self.registry,
        )
        self.shadow = Counter(
            "offramp_capture_shadow", "shadow requests, by outcome", ["outcome"], registry=self.registry
        )
        self.record_failures.inc(0)
        for outcome in ("stored", "failed", "dropped"):
            self.shadow.labels(outcome)


@dataclass
class Pending:
    """One call in flight: what the record needs from the request side."""

    path: str
    raw: bytes
    body: dict | None
    tag: str | None
    time: dt.datetime
    t0: float
    call_id: str = field(default_factory=lambda: f"capture-{uuid.uuid4().hex}")


class StreamCopy:
    """A copy of an SSE chat (or completions) stream, parsed for the record: the answer of choice 0 assembled from
    its deltas, the model, and the last chunk that carried usage."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tools: dict[int, dict] = {}
        self.usage_chunk: dict | None = None
        self.last: dict | None = None
        self.error: str | None = None

    def feed(self, event: bytes) -> bool:
        """Take one event; True if it is the stream's `[DONE]`."""
        data = sse_data(event)
        if data is None:
            return False
        if data.strip() == "[DONE]":
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        self.last = chunk
        if chunk.get("usage"):
            self.usage_chunk = chunk
        if isinstance(chunk.get("error"), dict):
            self.error = str(chunk["error"].get("message") or chunk["error"])[:500]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._take(choice)
        return False

    def _take(self, choice: dict) -> None:
        delta = choice.get("delta")
        if not isinstance(delta, dict):  # /v1/completions streams text, not deltas
            if isinstance(choice.get("text"), str):
                self.parts.append(choice["text"])
            return
        if isinstance(delta.get("content"), str):
            self.parts.append(delta["content"])
        for tc in delta.get("tool_calls") or []:
            t = self.tools.setdefault(tc.get("index", 0), {"id": None, "type": "function", "function": {}})
            t["id"] = tc.get("id") or t["id"]
            fn = tc.get("function") or {}
            for k in ("name", "arguments"):
                if fn.get(k):
                    t["function"][k] = t["function"].get(k, "") + fn[k]

    def answer(self) -> str | None:
        if not self.parts and self.tools:
            return canonical([self.tools[i] for i in sorted(self.tools)])
        return "".join(self.parts) if self.parts else None

    def response(self) -> dict | None:
        return self.usage_chunk or self.last


def answer_text(body: dict) -> str | None:
    """Choice 0's answer of a chat.completion (text or tool calls) or of a text completion; None if it has none."""
    try:
        choice = body["choices"][0]
        if isinstance(choice, dict) and "text" in choice and "message" not in choice:
            return choice["text"]
        return answer_of(body)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def safe_usage(body: dict | None) -> dict[str, int | None]:
    try:
        return usage_of(body) if isinstance(body, dict) else {}
    except ValueError:  # a malformed usage is recorded as unknown, never guessed
        return {}


def error_text(status: int, body: Any, raw: bytes) -> str | None:
    if 200 <= status < 300:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"])[:500]
    return raw.decode("utf-8", "replace")[:500] or f"HTTP {status}"


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class Capture:
    """The proxy's state (clients, store, metrics, shadow queue) and its request handlers."""

    def __init__(self, cfg: CaptureSettings, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = CaptureMetrics()
        self.client: httpx.AsyncClient | None = None
        self.shadow_client: httpx.AsyncClient | None = None
        self.queue: asyncio.Queue[tuple[int, str, dict]] = asyncio.Queue(cfg.shadow_queue)
        self.tasks: set[asyncio.Task] = set()  # records finished after a client left mid-stream

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.cfg.timeout_s), limits=limits)
        workers = []
        if self.cfg.shadow is not None:  # a local endpoint: loopback, no proxies
            self.shadow_client = httpx.AsyncClient(timeout=httpx.Timeout(self.cfg.timeout_s), trust_env=False)
            workers = [asyncio.create_task(self._shadow_worker()) for _ in range(self.cfg.shadow_workers)]
        yield
        for w in workers:
            w.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()
        if self.shadow_client is not None:
            await self.shadow_client.aclose()

    # --- forwarding ----------------------------------------------------------------------------------------
    def _upstream_request(self, request: Request, path: str, raw: bytes) -> httpx.Request:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        headers.update(self.cfg.upstream.headers())
        url = self.cfg.upstream.base_url + path.removeprefix("/v1")
        return self.client.build_request(request.method, url, content=raw, headers=headers, params=request.query_params)

    async def forward(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        raw = await request.body()
        body = _json(raw)
        body = body if isinstance(body, dict) else None
        header_tag = request.headers.get("x-offramp-tag")
        tag = tag_of(body or {}, {"headers": {"x-offramp-tag": header_tag}})
        p = Pending(path, raw, body, tag, dt.datetime.now(dt.UTC), time.perf_counter())
        try:
            reply = await self.client.send(self._upstream_request(request, path, raw), stream=True)
        except httpx.TimeoutException as e:
            return await self._failed(p, 504, f"the upstream did not answer in time ({type(e).__name__})")
        except httpx.HTTPError as e:
            return await self._failed(p, 502, f"the upstream could not be reached ({type(e).__name__}: {e})")
        headers = {k: v for k, v in reply.headers.items() if k.lower() not in DROP_REPLY}
        if reply.status_code == 200 and reply.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(self._relay(p, reply), status_code=200, headers=headers)
        try:
            content = await reply.aread()
        except httpx.HTTPError as e:
            return await self._failed(p, 502, f"the upstream's answer broke off ({type(e).__name__})")
        finally:
            await reply.aclose()
        payload = _json(content)
        payload = payload if isinstance(payload, dict) else None
        answer = answer_text(payload) if payload and reply.status_code == 200 else None
        error = error_text(reply.status_code, payload, content)
        await self.record(p, reply.status_code, payload, answer, safe_usage(payload), error)
        return Response(content, status_code=reply.status_code, headers=headers)

    async def _relay(self, p: Pending, reply: httpx.Response) -> AsyncIterator[bytes]:
        """The upstream's events as they arrive; the record is committed before `[DONE]` is passed on (or, for a
        stream without one, before the response ends)."""
        copy, recorded, error = StreamCopy(), False, None
        try:
            async for event in sse_events(reply.aiter_bytes()):
                if copy.feed(event) and not recorded:
                    await self._record_stream(p, copy, None)
                    recorded = True
                yield event
        except httpx.HTTPError as e:
            error = f"the upstream's stream broke off ({type(e).__name__})"
        except BaseException:  # the client went away: record what came, without holding up the cancellation
            if not recorded:
                self._later(self._record_stream(p, copy, "the client disconnected mid-stream"))
            raise
        finally:
            await reply.aclose()
        if not recorded:
            await self._record_stream(p, copy, error or copy.error)

    async def _record_stream(self, p: Pending, copy: StreamCopy, error: str | None) -> None:
        await self.record(p, 200, copy.response(), copy.answer(), safe_usage(copy.usage_chunk), error)

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _failed(self, p: Pending, status: int, message: str) -> Response:
        await self.record(p, status, None, None, {}, message)
        return openai_error(message, status, "upstream_error")

    # --- recording -----------------------------------------------------------------------------------------
    def make_call(
        self, p: Pending, status: int, response: dict | None, answer: str | None, usage: dict, error: str | None
    ) -> Call:
        request = p.body if p.body is not None else {"unparsed_body": p.raw.decode("utf-8", "replace")[:10000]}
        if self.cfg.redact:
            request, response = redact(request), redact(response)
            answer = redact_text(answer) if answer is not None else None
        model = (response or {}).get("model") or (p.body or {}).get("model")
        return Call(
            request=request,
            response=response,
            answer=answer,
            time=p.time,
            source="proxy",
            time_source="proxy",
            model=str(model) if model else None,
            tag=p.tag,
            custom_id=p.call_id,
            latency_ms=(time.perf_counter() - p.t0) * 1000,
            status=status,
            error=error,
            provider=self.cfg.upstream.provider,
            upstream=self.cfg.upstream.base_url + p.path.removeprefix("/v1"),
            **usage,
        )

    async def record(
        self, p: Pending, status: int, response: dict | None, answer: str | None, usage: dict, error: str | None
    ) -> None:
        """Commit the call (in a worker thread); a failure is logged and counted, never passed to the client."""
        self.metrics.requests.labels(str(status)).inc()
        try:
            call = self.make_call(p, status, response, answer, usage, error)
            await asyncio.to_thread(self.store.record, call)
        except Exception as e:  # the store, not the call, failed: the client still gets its answer
            self.metrics.record_failures.inc()
            log.error("offramp capture: call %s not recorded: %s", p.call_id, e)
            return
        if self.cfg.shadow is not None and status == 200 and error is None and p.body is not None:
            self._shadow(call.id, p.path, p.body)

    # --- shadow mode ---------------------------------------------------------------------------------------
    def _shadow(self, call_id: int | None, path: str, body: dict) -> None:
        if call_id is None:
            return
        try:
            self.queue.put_nowait((call_id, path, body))
        except asyncio.QueueFull:
            self.metrics.shadow.labels("dropped").inc()

    async def _shadow_worker(self) -> None:
        while True:
            call_id, path, body = await self.queue.get()
            try:
                answer = await self._ask_shadow(path, body)
                if self.cfg.redact and answer is not None:
                    answer = redact_text(answer)
                if answer is None:
                    raise OfframpError("no answer in the reply")
                await asyncio.to_thread(self.store.set_shadow, call_id, answer)
                self.metrics.shadow.labels("stored").inc()
            except Exception as e:  # a shadow is best effort: counted, logged, never retried
                self.metrics.shadow.labels("failed").inc()
                log.warning("offramp capture: shadow of call %s failed: %s", call_id, e)
            finally:
                self.queue.task_done()

    async def _ask_shadow(self, path: str, body: dict) -> str | None:
        shadow = self.cfg.shadow
        request = {**body, "model": shadow.model, "stream": False}
        request.pop("stream_options", None)
        url = shadow.base_url + path.removeprefix("/v1")
        r = await self.shadow_client.post(url, json=request, headers=shadow.headers())
        if r.status_code != 200:
            raise OfframpError(f"HTTP {r.status_code}: {r.text[:200]}")
        return answer_text(r.json())

    # --- the other routes ----------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        try:
            r = await self.client.get(f"{self.cfg.upstream.base_url}/models", headers=self.cfg.upstream.headers())
        except httpx.HTTPError as e:
            return openai_error(f"the upstream could not be reached ({type(e).__name__})", 502, "upstream_error")
        headers = {k: v for k, v in r.headers.items() if k.lower() not in DROP_REPLY}
        return Response(r.content, status_code=r.status_code, headers=headers)

    async def health(self) -> dict:
        return {"status": "ok", "upstream": self.cfg.upstream.base_url, "store": self.store.name}


def build_app(cfg: CaptureSettings, store: Store) -> FastAPI:
    capture = Capture(cfg, store)
    app = FastAPI(title="offramp capture", lifespan=capture.lifespan)
    app.state.capture = capture
    app.add_middleware(RequireKey, key=cfg.api_key)  # every route but health and metrics
    add_metrics(app, capture.metrics.registry)
    app.get("/health")(capture.health)
    app.get("/v1/models")(capture.models)
    for path in ENDPOINTS:
        app.post(path)(capture.forward)
    return app


class CaptureProxy(AppServer):
    """The capture app under uvicorn (offramp.serve.router.AppServer): `run()` or `start()`/`stop()`."""

    def __init__(self, cfg: CaptureSettings, store: Store, host: str = "127.0.0.1", port: int = 8080) -> None:
        super().__init__(build_app(cfg, store), host, port, name="the capture proxy")
