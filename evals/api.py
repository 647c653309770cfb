"""Endpoints through lm-eval's `local-chat-completions`, extended with what a paid API needs.

lm-eval's TemplateAPI retries every failure (a 400 as well as a 429) with a fixed policy, keeps no reply cache
across runs, and drops the `usage` block. `CachedChatCompletions` subclasses its `LocalChatCompletion` and
overrides only `model_call`: a disk cache keyed by base URL + the exact request payload (model, messages, params;
paid APIs only, see `EndpointSystem.answers_cacheable`),
retries with exponential backoff on 429 / 5xx / connection errors only (honouring Retry-After), a clear error
on anything else, and a ledger of tokens and latency per request. lm-eval's own retry wrapper is set to one
attempt so the two policies do not multiply.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offramp.errors import OfframpError
from offramp.paths import read_json, write_json
from offramp.reports import now_iso
from offramp.systems import EndpointSystem


class ApiCache:
    """One JSON file per request under `root/<2 hex>/<sha256>.json`, written atomically (temp file + rename),
    so an interrupt leaves either the old state or the complete new entry, never a torn file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(url: str, payload: dict) -> str:
        blob = json.dumps({"url": url, "payload": payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = read_json(path)
        except ValueError:  # not written by us (writes are atomic): treat as a miss and overwrite
            return None
        return entry if isinstance(entry, dict) and "response" in entry else None

    def put(self, key: str, entry: dict) -> None:
        write_json(self._path(key), entry)


@dataclass
class Ledger:
    """What each request cost: keyed by (prompt messages as JSON, mode)."""

    calls: dict[tuple[str, str], dict] = field(default_factory=dict)
    http_requests: int = 0
    retries: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # requests run in worker threads

    def record(self, messages: list[dict], mode: str, entry: dict) -> None:
        with self.lock:
            self.calls[(json.dumps(messages, ensure_ascii=False), mode)] = entry

    def count(self, *, status: int | None = None, retry: bool = False) -> None:
        with self.lock:
            if retry:
                self.retries += 1
            if status is not None:
                self.http_requests += 1
                self.status_counts[str(status)] = self.status_counts.get(str(status), 0) + 1

    def lookup(self, messages: list[dict], mode: str) -> dict | None:
        return self.calls.get((json.dumps(messages, ensure_ascii=False), mode))


def request_mode(payload: dict) -> str:
    return "constrained" if "structured_outputs" in payload or "response_format" in payload else "free"


def post_with_retries(
    url: str,
    payload: dict,
    headers: dict,
    *,
    who: str,
    key_env: str | None,
    ledger: Ledger,
    max_attempts: int = 6,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    timeout_s: float = 120.0,
) -> tuple[dict, float]:
    """POST once per attempt; back off on 429 / 5xx / connection errors; return (json, seconds of the last try)."""
    import httpx
    from tenacity import Retrying

    from offramp.retry import policy

    def attempt() -> httpx.Response:
        resp = httpx.post(url, json=payload, headers=headers, timeout=timeout_s)
        ledger.count(status=resp.status_code)
        return resp

    retrying = Retrying(
        **policy(
            attempts=max_attempts, transient=(httpx.TransportError,), backoff_s=backoff_s, max_backoff_s=max_backoff_s
        ),
        before_sleep=lambda _: ledger.count(retry=True),
        retry_error_callback=lambda state: state.outcome.result(),  # the last reply, or its exception raised
    )
    try:
        resp = retrying(attempt)
    except httpx.TransportError as e:
        last = f"{type(e).__name__}: {e}"
        raise OfframpError(f"{who}: {url} failed after {max_attempts} attempts; last: {last}") from None
    return _json_reply(resp, url, who=who, key_env=key_env, attempts=max_attempts)


def _json_reply(resp: Any, url: str, *, who: str, key_env: str | None, attempts: int) -> tuple[dict, float]:
    """The final reply's JSON and the seconds it took, or the one error it amounts to."""
    from offramp.retry import RETRY_STATUS

    if resp.status_code == 200:
        try:
            return resp.json(), resp.elapsed.total_seconds()
        except ValueError:
            raise OfframpError(f"{who}: the endpoint answered 200 with a body that is not JSON") from None
    detail = _error_message(resp)
    if resp.status_code in (401, 403):
        hint = f"; check the key in {key_env}" if key_env else ""
        raise OfframpError(f"{who}: {url} refused the request (HTTP {resp.status_code}: {detail}){hint}")
    if resp.status_code not in RETRY_STATUS:
        raise OfframpError(f"{who}: {url} rejected the request (HTTP {resp.status_code}: {detail})")
    raise OfframpError(f"{who}: {url} failed after {attempts} attempts; last: HTTP {resp.status_code}: {detail}")


def _error_message(resp: Any) -> str:
    try:
        body = resp.json()
        msg = body.get("error", body) if isinstance(body, dict) else body
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
        return str(msg)[:200]
    except ValueError:
        return resp.text[:200]


def _adapted_payload(system: EndpointSystem, payload: dict) -> dict:
    """lm-eval's chat payload, fitted to what each provider accepts."""
    stop = [s for s in payload.get("stop") or [] if s]
    if system.provider == "anthropic":
        stop = [s for s in stop if s.strip()]  # Anthropic's compatible API rejects whitespace stops
        payload.pop("seed", None)
    if stop:
        payload["stop"] = stop
    else:
        payload.pop("stop", None)
    if system.provider == "openai":  # current OpenAI models take max_completion_tokens only
        payload["max_completion_tokens"] = payload.pop("max_tokens")
    return payload


@dataclass
class _Sender:
    """One endpoint's cached, retrying POST, and the ledger every answer is recorded in."""

    system: EndpointSystem
    cache: ApiCache | None
    ledger: Ledger
    max_attempts: int
    backoff_s: float

    def send(self, url: str, payload: dict, headers: dict) -> tuple[dict, float | None, bool]:
        """(response, latency in s, whether it came from the cache)."""
        key = ApiCache.key(url, payload)
        hit = self.cache.get(key) if self.cache else None
        if hit is not None:
            return hit["response"], hit.get("latency_s"), True
        response, latency = post_with_retries(
            url,
            payload,
            headers,
            who=f"system {self.system.name!r}",
            key_env=self.system.key_env,
            ledger=self.ledger,
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
        )
        if self.cache:
            entry = {"created_at": now_iso(), "url": url, "request": payload, "response": response}
            self.cache.put(key, {**entry, "latency_s": latency})
        return response, latency, False

    def record(self, chat: Any, payload: dict, response: dict, latency: float | None, cached: bool) -> None:
        usage = response.get("usage") or {}
        self.ledger.record(
            chat,
            request_mode(payload),
            {
                "input_tokens": usage.get("prompt_tokens"),
                "output_tokens": usage.get("completion_tokens"),  # reasoning tokens included, as billed
                "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
                "latency_s": latency,
                "cached": cached,
                "logprob": answer_logprob(response),
            },
        )


def make_api_lm(
    system: EndpointSystem,
    model: str,
    *,
    cache: ApiCache | None,
    ledger: Ledger,
    max_gen_toks: int,
    max_attempts: int = 6,
    backoff_s: float = 0.5,
    concurrency: int = 8,
):
    """An lm-eval LM for the endpoint (class built here so lm-eval is imported only when an eval runs).

    With `concurrency` > 1 lm-eval sends its requests through `amodel_call` under a semaphore; ours runs the same
    cached, retrying `model_call` in a worker thread, so both paths share one cache, retry policy and ledger."""
    from lm_eval.models.api_models import LMEVAL_MODEL_NONE_ANSWER_PLACEHOLDER as NONE_ANSWER
    from lm_eval.models.openai_completions import LocalChatCompletion

    sender = _Sender(system, cache, ledger, max_attempts, backoff_s)

    class CachedChatCompletions(LocalChatCompletion):
        @property
        def api_key(self) -> str:
            return system.api_key() or ""

        @property
        def header(self) -> dict:
            key = system.api_key()
            return {**({"Authorization": f"Bearer {key}"} if key else {}), **system.headers}

        def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs):
            payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=None)
            return _adapted_payload(system, payload)

        def model_call(self, messages, *, generate=True, gen_kwargs=None, **kwargs):
            chat = self.create_message(messages)
            payload = self._create_payload(
                chat, generate=generate, gen_kwargs=copy.deepcopy(gen_kwargs), seed=self._seed
            )
            response, latency, cached = sender.send(self.base_url, payload, self.header)
            sender.record(chat, payload, response, latency, cached)
            return response

        async def amodel_call(self, session, sem, messages, *, generate=True, cache_keys=None, gen_kwargs=None, **kw):
            async with sem:
                response = await asyncio.to_thread(self.model_call, messages, generate=generate, gen_kwargs=gen_kwargs)
            answers = self.parse_generations(outputs=response)
            for answer, cache_key in zip(answers, cache_keys or [], strict=False):
                if answer is not None:
                    self.cache_hook.add_partial("generate_until", cache_key, answer)
            return [NONE_ANSWER if a is None else a for a in answers]

    return CachedChatCompletions(
        base_url=f"{system.base_url}/chat/completions",
        model=model,
        tokenizer_backend=None,
        tokenized_requests=False,
        max_retries=1,
        num_concurrent=concurrency,
        max_gen_toks=max_gen_toks,
    )


def answer_logprob(response: dict) -> float | None:
    """Sum of the generated tokens' log-probabilities, when the endpoint returned them (`logprobs: true`)."""
    try:
        content = response["choices"][0]["logprobs"]["content"]
        return round(sum(float(t["logprob"]) for t in content), 6) if content else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def probe(system: EndpointSystem, timeout_s: float = 10.0) -> str:
    """Fail early on an unreachable endpoint or a refused key; return the model to use."""
    import httpx

    key = system.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{system.base_url}/models"
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.TransportError as e:
        raise OfframpError(
            f"system {system.name!r}: endpoint {system.base_url} is unreachable ({type(e).__name__}: {e})"
        ) from None
    if resp.status_code in (401, 403):
        hint = f"; check the key in {system.key_env}" if system.key_env else "; give its key with +key_env=VAR"
        raise OfframpError(f"system {system.name!r}: {system.base_url} refused the key (HTTP {resp.status_code}){hint}")
    if system.model:
        return system.model
    try:
        models = [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        models = []
    if not models:
        raise OfframpError(f"system {system.name!r}: {url} lists no models; name one with +model=NAME")
    return models[0]
