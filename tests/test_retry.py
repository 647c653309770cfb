"""offramp/retry.py, the one retry policy: its waits, and the cascade router's fallback budget under it.

The router tests put a fake OpenAI server on both sides (tests/fake_openai.py): as the local model (unsure of
every answer, so each request is escalated) and as the failing fallback. No vLLM: the retry and deadline logic is
the router's, whatever answers locally."""

from __future__ import annotations

import time

import httpx
import pytest
from fake_openai import FakeOpenAI
from tenacity import RetryCallState, Retrying, wait_fixed

from offramp.errors import OfframpError
from offramp.evals.api import Ledger, post_with_retries
from offramp.retry import RETRY_STATUS, WaitRetryAfter, policy, retry_after
from offramp.serve.cascade import CascadeSettings, Fallback, Router
from offramp.serve.server import free_port


def _state_after(reply: httpx.Response | None, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if reply is None:
        state.set_exception((httpx.ConnectError, httpx.ConnectError("refused"), None))
    else:
        state.set_result(reply)
    return state


def test_retry_after_is_honoured_then_capped_else_the_fallback_wait():
    wait = WaitRetryAfter(wait_fixed(0.7), cap=5.0)
    assert wait(_state_after(httpx.Response(429, headers={"retry-after": "2"}))) == 2.0
    assert wait(_state_after(httpx.Response(429, headers={"retry-after": "0"}))) == 0.0  # "now" means now
    assert wait(_state_after(httpx.Response(503, headers={"retry-after": "60"}))) == 5.0
    assert wait(_state_after(httpx.Response(500))) == 0.7
    assert wait(_state_after(httpx.Response(429, headers={"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}))) == 0.7
    assert wait(_state_after(None)) == 0.7  # a connection error has no reply to read
    assert retry_after(httpx.Response(429, headers={"retry-after": "-3"})) == 0.0


def test_policy_backs_off_exponentially_and_retries_only_transient_failures():
    kw = policy(attempts=4, transient=(httpx.TransportError,), backoff_s=0.5, max_backoff_s=1.5)
    assert [kw["wait"](_state_after(httpx.Response(500), n)) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    assert kw["retry"](_state_after(None))
    assert all(kw["retry"](_state_after(httpx.Response(s))) for s in RETRY_STATUS)
    assert not any(kw["retry"](_state_after(httpx.Response(s))) for s in (200, 400, 401, 403, 404, 422))
    assert kw["stop"](_state_after(httpx.Response(500), 4)) and not kw["stop"](_state_after(httpx.Response(500), 3))


def test_eval_requests_wait_as_told_and_name_the_last_failure():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    with FakeOpenAI({"q": "a"}, schedule=[429], retry_after=0.2) as api:
        ledger, t0 = Ledger(), time.monotonic()
        out, latency = post_with_retries(
            f"{api.url}/chat/completions", body, {}, who="t", key_env=None, ledger=ledger, backoff_s=20
        )
        assert time.monotonic() - t0 < 5 and api.statuses == [429, 200] and ledger.retries == 1  # 0.2 s, not 20 s
        assert out["choices"][0]["message"]["content"] == "a" and 0 < latency < 5
    closed = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    ledger = Ledger()
    with pytest.raises(OfframpError, match="failed after 2 attempts; last: ConnectError"):
        post_with_retries(closed, body, {}, who="t", key_env=None, ledger=ledger, max_attempts=2, backoff_s=0.01)
    assert ledger.retries == 1 and ledger.http_requests == 0


@pytest.fixture
def local():
    with FakeOpenAI(default="Paris", logprob=-0.5) as fake:  # confidence exp(-0.5) = 0.61: escalated at 1.0
        yield fake


def _router(local: FakeOpenAI, fallback_url: str, **kwargs) -> Router:
    cfg = CascadeSettings(local.url, "fake-model", Fallback(fallback_url, "fake-gpt", None), 1.0, **kwargs)
    return Router(cfg, port=free_port())


def _ask(router: Router) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    body = {"messages": [{"role": "user", "content": "q"}]}
    r = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=60)
    return r, time.monotonic() - t0


def test_cascade_retries_5xx_then_answers_locally_degraded(local):
    with FakeOpenAI(default="Rome", schedule=[500] * 10) as api, _router(local, api.url, retries=2) as router:
        r, _ = _ask(router)
        assert r.status_code == 200 and r.headers["x-offramp-route"] == "degraded"
        assert r.json()["choices"][0]["message"]["content"] == "Paris"
        assert api.statuses == [500, 500, 500]  # first try + 2 retries
        api.schedule = [503]
        r, _ = _ask(router)
        assert r.headers["x-offramp-route"] == "fallback" and api.statuses[-2:] == [503, 200]


def test_cascade_does_not_retry_a_refused_key(local):
    with FakeOpenAI(api_key="sk-right") as api, _router(local, api.url, retries=3) as router:
        r, _ = _ask(router)
        assert r.headers["x-offramp-route"] == "degraded" and api.statuses == [401]


@pytest.mark.parametrize("failure", ["429 retry-after past the budget", "hangs", "closed port"])
def test_cascade_answers_within_its_fallback_budget(local, failure):
    budget = 2.0
    with FakeOpenAI(default="Rome") as api:
        url = api.url
        if failure.startswith("429"):
            api.schedule, api.retry_after = [429] * 10, 60.0
        elif failure == "hangs":
            api.latency_s = 30.0
        else:
            api.stop()
        with _router(local, url, retries=5, fallback_timeout_s=budget) as router:
            r, elapsed = _ask(router)
            assert r.status_code == 200 and r.headers["x-offramp-route"] == "degraded"
            assert elapsed < budget + 1.5, elapsed
            if failure.startswith("429"):
                assert api.statuses == [429]  # told to come back in 60 s, past the 2 s budget: no second try
            metrics = httpx.get(f"{router.url}/metrics", timeout=10).text
            assert 'offramp_cascade_requests_total{route="degraded"} 1.0' in metrics
