"""A fake paid API for tests: a real HTTP server on loopback speaking the OpenAI chat-completions protocol.

Configurable per test (attributes may be changed while it runs):
- `answers`: {last user message: answer} or a callable(messages) -> answer; `default` for anything else;
- `schedule`: HTTP statuses returned to the next /chat/completions requests, in order, before answering 200
  (e.g. [429, 500]); `retry_after` is sent with 429s;
- `latency_s`: sleep before each answer (a slow or timing-out API);
- `logprob`: the per-token logprob reported when the request asks for logprobs (float or callable(messages));
  None: never return logprobs (an endpoint that cannot be a cascade candidate);
- `api_key`: when set, requests without `Authorization: Bearer <api_key>` get 401;
- `stream_style`: "compact" (default: the answer in one chunk, usage on the finishing chunk) or "openai" (as
  OpenAI streams: a role chunk, one chunk per word, the finishing chunk, then a usage chunk with no choices only
  when the request sets `stream_options.include_usage`);
- `count_tokens`: callable(messages, answer) -> (prompt_tokens, completion_tokens) for chat usage, e.g. a real
  tokenizer's counts (default: words, +4 per message);
- `usage_details`: when set, a dict {"cached_tokens": N, "reasoning_tokens": M} reported in the usage details.
Besides /v1/chat/completions it answers /v1/completions (`prompt` looked up in `answers` like a last user message).
It honours vLLM's `structured_outputs: {"choice": [...]}` and OpenAI's `response_format` JSON schema with an enum,
streams when asked (`stream: true`), and counts everything: `hits` per path, `statuses`, `requests` (bodies).

    with FakeOpenAI(answers={"hi": "greeting"}, schedule=[429]) as api:
        ...  # point a client at api.url (http://127.0.0.1:PORT/v1)
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(
        self,
        answers: dict[str, str] | Callable[[list[dict]], str] | None = None,
        *,
        default: str = "",
        schedule: list[int] | None = None,
        retry_after: float | None = 0.0,
        latency_s: float = 0.0,
        logprob: float | Callable[[list[dict]], float] | None = -0.05,
        model: str = "fake-model",
        api_key: str | None = None,
        stream_style: str = "compact",
        usage_details: dict[str, int] | None = None,
        count_tokens: Callable[[list[dict], str], tuple[int, int]] | None = None,
    ) -> None:
        self.answers = answers or {}
        self.default = default
        self.schedule = list(schedule or [])
        self.retry_after = retry_after
        self.latency_s = latency_s
        self.logprob = logprob
        self.model = model
        self.api_key = api_key
        self.stream_style = stream_style
        self.usage_details = usage_details
        self.count_tokens = count_tokens
        self.hits: Counter[str] = Counter()
        self.statuses: list[int] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                fake._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                fake._handle(self, body if isinstance(body, dict) else {"__invalid__": True})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def completions(self) -> int:
        """Requests that reached /v1/chat/completions (any status)."""
        return self.hits["/v1/chat/completions"]

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
            self.statuses.clear()
            self.requests.clear()

    # ---- protocol ----
    def answer_for(self, messages: list[dict]) -> str:
        if callable(self.answers):
            return self.answers(messages)
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        return self.answers.get(users[-1] if users else "", self.default)

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        with self.lock:  # counted before the client can see the reply, so a test never reads a stale count
            self.statuses.append(status)
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, body: dict | None) -> None:
        path = h.path.split("?")[0].rstrip("/")
        with self.lock:
            self.hits[path] += 1
            if body is not None:
                self.requests.append({"path": path, "body": body, "authorization": h.headers.get("authorization")})
        if self.api_key and h.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._send(
                h, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
            )
        if path == "/v1/models" and body is None:
            return self._send(h, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if path not in ("/v1/chat/completions", "/v1/completions") or body is None:
            return self._send(h, 404, {"error": {"message": f"no route {h.command} {path}"}})
        text = path == "/v1/completions"
        if text and (body.get("__invalid__") or not isinstance(body.get("prompt"), str)):
            return self._send(h, 400, {"error": {"message": "prompt must be a string"}})
        if not text and (body.get("__invalid__") or not isinstance(body.get("messages"), list)):
            return self._send(h, 400, {"error": {"message": "messages must be a list"}})
        with self.lock:
            status = self.schedule.pop(0) if self.schedule else 200
        if self.latency_s:
            time.sleep(self.latency_s)
        if status != 200:
            headers = {"retry-after": str(self.retry_after)} if status == 429 and self.retry_after is not None else {}
            return self._send(h, status, {"error": {"message": f"scheduled {status}", "type": "fake"}}, headers)
        if text:
            return self._complete(h, body)
        messages = body["messages"]
        content = self._constrain(self.answer_for(messages), body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        completion_tokens = max(1, len(content.split()))
        message: dict[str, Any] = {"role": "assistant", "content": content}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs") and self.logprob is not None:
            lp = self.logprob(messages) if callable(self.logprob) else self.logprob
            choice["logprobs"] = {
                "content": [
                    {"token": tok, "logprob": lp, "top_logprobs": [{"token": tok, "logprob": lp}]}
                    for tok in content.split() or [content]
                ]
            }
        if self.count_tokens is not None:
            prompt_tokens, completion_tokens = self.count_tokens(messages, content)
        usage = self._usage(prompt_tokens, completion_tokens)
        model = body.get("model", self.model)
        if body.get("stream") and self.stream_style == "openai":
            return self._stream_openai(h, body, model, content, usage)
        if body.get("stream"):
            return self._stream(h, model, content, usage)
        self._send(
            h,
            200,
            {
                "id": f"chatcmpl-fake-{len(self.statuses)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    @staticmethod
    def _constrain(answer: str, body: dict) -> str:
        choices = (body.get("structured_outputs") or {}).get("choice")
        if choices:
            return answer if answer in choices else choices[0]
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            prop = fmt["json_schema"]["schema"]["properties"]["label"]
            enum = prop.get("enum") or [answer]
            return json.dumps({"label": answer if answer in enum else enum[0]})
        return answer

    def _stream(self, h: BaseHTTPRequestHandler, model: str, content: str, usage: dict) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        base = {
            "id": "chatcmpl-fake-stream",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        chunks = [
            {
                **base,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}],
            },
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
        ]
        for c in chunks:
            h.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
        h.wfile.write(b"data: [DONE]\n\n")
        with self.lock:
            self.statuses.append(200)

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.usage_details:
            usage["prompt_tokens_details"] = {"cached_tokens": self.usage_details.get("cached_tokens", 0)}
            usage["completion_tokens_details"] = {"reasoning_tokens": self.usage_details.get("reasoning_tokens", 0)}
        return usage

    def _complete(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        """/v1/completions: the answer to `prompt`, as a text_completion."""
        prompt = body["prompt"]
        content = self.answer_for([{"role": "user", "content": prompt}])
        usage = self._usage(len(prompt.split()), max(1, len(content.split())))
        reply = {
            "id": f"cmpl-fake-{len(self.statuses)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "text": content, "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        }
        self._send(h, 200, reply)

    def _stream_openai(self, h: BaseHTTPRequestHandler, body: dict, model: str, content: str, usage: dict) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        base = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = model
        words = content.split(" ")
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(words)
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for c in chunks:
            h.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
            h.wfile.flush()
        h.wfile.write(b"data: [DONE]\n\n")
        with self.lock:
            self.statuses.append(200)
