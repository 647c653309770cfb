"""`offramp capture`, the recording proxy (offramp/traffic/capture.py), driven by the official `openai` client.

The paid API is tests/fake_openai.py (a real HTTP server on loopback); the proxy is the real FastAPI app under
uvicorn; the store is a real SQLite file or a real PostgreSQL database (tests/conftest_traffic.py). Each test
compares what the client saw through the proxy with what the same fake answers directly, and reads the store back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa
from conftest_traffic import postgres_server, store_url  # noqa: F401  (fixtures)
from fake_openai import FakeOpenAI
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binomtest

from offramp.errors import OfframpError
from offramp.serve.auth import OPEN_PATHS
from offramp.serve.cascade import Fallback
from offramp.serve.router import Upstream
from offramp.serve.server import free_port
from offramp.traffic import report as rep
from offramp.traffic.capture import CaptureProxy, CaptureSettings
from offramp.traffic.store import Call, open_store

MESSAGES = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "capital of France?"}]
DETAILS = {"cached_tokens": 3, "reasoning_tokens": 2}


@pytest.fixture
def api() -> Iterator[FakeOpenAI]:
    answers = {"capital of France?": "Paris is the capital", "capital of Italy?": "Rome"}
    with FakeOpenAI(answers, default="no idea", stream_style="openai", usage_details=DETAILS) as fake:
        yield fake


@contextlib.contextmanager
def proxy(upstream_url: str, store_path: str, **settings) -> Iterator[tuple[CaptureProxy, object]]:
    store = open_store(store_path)
    cfg = CaptureSettings(upstream=Upstream(upstream_url, None, None), **settings)
    try:
        with CaptureProxy(cfg, store, port=free_port()) as p:
            yield p, store
    finally:
        store.close()


def client(base_url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name}{labels} not on /metrics:\n{text}")


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# --- pass-through and what is recorded -------------------------------------------------------------------------


def test_non_streaming_call_is_passed_through_and_recorded(api: FakeOpenAI, store_url: str) -> None:  # noqa: F811
    direct = client(api.url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user="team-a")
    with proxy(api.url, store_url) as (p, store):
        via = client(f"{p.url}/v1").chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user="team-a", extra_headers={"X-Offramp-Tag": "support/intent"}
        )
        got = via.parse()
        calls = store.query()
    assert without(got.model_dump(), "id", "created") == without(direct.model_dump(), "id", "created")
    assert api.requests[-1]["body"] == api.requests[-2]["body"]  # the request arrived as the client sent it
    (call,) = calls
    u = direct.usage
    assert (call.prompt_tokens, call.completion_tokens) == (u.prompt_tokens, u.completion_tokens)
    assert (call.cached_tokens, call.reasoning_tokens) == (3, 2)
    assert call.status == 200 and call.error is None and call.source == "proxy"
    assert call.answer == "Paris is the capital" and call.model == "gpt-4o-mini"
    assert call.tag == "support/intent"  # the header wins over the request's user field
    assert call.request["messages"] == MESSAGES and call.response["choices"][0]["message"]["content"] == call.answer
    assert 0 < call.latency_ms < 10_000
    # gpt-4o-mini list price ($0.15 / $0.60 per 1M); 3 cached tokens are under OpenAI's 1,024-token cache minimum
    assert call.cost_usd == pytest.approx(u.prompt_tokens * 0.15e-6 + u.completion_tokens * 0.60e-6)


def test_stream_with_usage_reaches_the_client_unchanged_and_is_assembled(api: FakeOpenAI, tmp_path: Path) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    direct = httpx.post(f"{api.url}/chat/completions", json=body, timeout=30).text
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        raw = httpx.post(f"{p.url}/v1/chat/completions", json=body, timeout=30)
        chunks = list(client(f"{p.url}/v1").chat.completions.create(**body))
        calls = store.query()
    assert raw.headers["content-type"].startswith("text/event-stream")
    same_second = re.compile(r'"created": \d+')  # the fake stamps each stream with the current second
    assert same_second.sub("", raw.text) == same_second.sub("", direct)  # otherwise byte for byte
    assert raw.text.count('"created"') == direct.count('"created"') == 7
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents == ["", "Paris", " is", " the", " capital", None] and chunks[-1].usage.completion_tokens == 4
    assert len(calls) == 2
    for call in calls:
        assert call.answer == "Paris is the capital" and call.status == 200
        assert (call.prompt_tokens, call.completion_tokens, call.cached_tokens) == (
            chunks[-1].usage.prompt_tokens,
            4,
            3,
        )
        assert call.response["usage"]["completion_tokens"] == 4 and call.cost_usd is None  # fake-model: no price
        assert "not in the price catalogue" in call.cost_note


def test_stream_without_usage_is_not_altered_and_its_usage_stays_unknown(api: FakeOpenAI, tmp_path: Path) -> None:
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        stream = client(f"{p.url}/v1").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        (call,) = store.query()
    assert "stream_options" not in api.requests[-1]["body"]  # no include_usage slipped in
    assert text == call.answer == "Paris is the capital"
    assert call.prompt_tokens is None and call.completion_tokens is None  # unknown, never 0
    assert call.cost_note == "no usage in the record (tokens unknown)"


def test_text_completions_and_models_pass_through(api: FakeOpenAI, tmp_path: Path) -> None:
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        c = client(f"{p.url}/v1")
        out = c.completions.create(model="fake-model", prompt="capital of Italy?")
        models = c.models.list()
        health = httpx.get(f"{p.url}/health", timeout=10)
        (call,) = store.query()
    assert out.choices[0].text == "Rome" and call.answer == "Rome"
    assert call.upstream == f"{api.url}/completions" and call.completion_tokens == out.usage.completion_tokens
    assert [m.id for m in models.data] == ["fake-model"] and health.json()["status"] == "ok"


# --- upstream failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_upstream_errors_reach_the_client_as_they_were_and_are_recorded(
    api: FakeOpenAI, tmp_path: Path, status: int, error: type
) -> None:
    api.schedule = [status]
    with pytest.raises(error) as direct:
        client(api.url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    api.schedule = [status]
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        with pytest.raises(error) as via:
            client(f"{p.url}/v1").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert metric(p.url, "offramp_capture_requests_total", status=str(status)) == 1
        (call,) = store.query()
    assert via.value.status_code == direct.value.status_code == status
    assert via.value.body == direct.value.body  # the upstream's own error body
    if status == 429:
        assert via.value.response.headers["retry-after"] == "0.0"
    assert call.status == status and call.error == f"scheduled {status}" and call.answer is None
    assert call.cost_usd is None and call.cost_note == "failed call (not billed)"


def test_unreachable_upstream_is_a_502_in_openai_shape(tmp_path: Path) -> None:
    with proxy(f"http://127.0.0.1:{free_port()}/v1", str(tmp_path / "t.db")) as (p, store):
        with pytest.raises(openai.APIStatusError) as e:
            client(f"{p.url}/v1").chat.completions.create(model="m", messages=MESSAGES)
        (call,) = store.query()
    assert e.value.status_code == 502 and "could not be reached" in e.value.body["message"]
    assert call.status == 502 and "ConnectError" in call.error


def test_slow_upstream_latency_is_recorded_and_the_answer_intact(api: FakeOpenAI, tmp_path: Path) -> None:
    api.latency_s = 0.6
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        t0 = time.monotonic()
        out = client(f"{p.url}/v1").chat.completions.create(model="m", messages=MESSAGES)
        seen_s = time.monotonic() - t0
        (call,) = store.query()
    assert out.choices[0].message.content == "Paris is the capital"
    assert 600 <= call.latency_ms <= seen_s * 1000


def test_a_failing_store_never_fails_the_call_and_is_counted(api: FakeOpenAI, tmp_path: Path) -> None:
    with proxy(api.url, str(tmp_path / "t.db")) as (p, store):
        with store.engine.begin() as conn:  # the store breaks under the running proxy
            conn.execute(sa.text("DROP TABLE offramp_calls"))
        out = client(f"{p.url}/v1").chat.completions.create(model="m", messages=MESSAGES)
        stream = client(f"{p.url}/v1").chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert out.choices[0].message.content == text == "Paris is the capital"
        assert metric(p.url, "offramp_capture_record_failures_total") == 2
        assert metric(p.url, "offramp_capture_requests_total", status="200") == 2


# --- keys and redaction --------------------------------------------------------------------------------------


def test_clients_need_the_proxy_key_and_the_upstream_gets_its_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OFFRAMP_UPSTREAM_API_KEY", "sk-upstream-secret")
    with FakeOpenAI(default="ok", api_key="sk-upstream-secret") as api:
        upstream = Upstream.parse(api.url, flag="--upstream", url_key_env="OFFRAMP_UPSTREAM_API_KEY", model=False)
        store = open_store(tmp_path / "t.db")
        cfg = CaptureSettings(upstream=upstream, api_key="proxy-key")
        with CaptureProxy(cfg, store, port=free_port()) as p:
            with pytest.raises(openai.AuthenticationError):
                client(f"{p.url}/v1", "wrong").chat.completions.create(model="m", messages=MESSAGES)
            out = client(f"{p.url}/v1", "proxy-key").chat.completions.create(model="m", messages=MESSAGES)
            assert httpx.get(f"{p.url}/metrics", timeout=10).status_code == 200  # scraping stays open
            spec = httpx.get(f"{p.url}/openapi.json", headers={"Authorization": "Bearer proxy-key"}, timeout=10)
            assert spec.status_code == 200 and httpx.get(f"{p.url}/openapi.json", timeout=10).status_code == 401
            for path, methods in spec.json()["paths"].items():
                for method in methods:
                    status = httpx.request(method.upper(), p.url + path, json={}, timeout=10).status_code
                    assert (status != 401) if path in OPEN_PATHS else (status == 401), (method, path, status)
        rows = [json.dumps(c.row(), default=str) for c in store.query()]
        store.close()
    assert out.choices[0].message.content == "ok"
    assert [r["authorization"] for r in api.requests] == ["Bearer sk-upstream-secret"]  # never the client's key
    assert len(rows) == 1 and not any(k in r for r in rows for k in ("sk-upstream-secret", "proxy-key"))


def test_redact_masks_the_stored_text_only(tmp_path: Path) -> None:
    said = "I am jane.doe@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, ref 4111 1111 1111 1112"
    answer = "We wrote to jane.doe@example.com"
    with FakeOpenAI(default=answer) as api, proxy(api.url, str(tmp_path / "t.db"), redact=True) as (p, store):
        out = client(f"{p.url}/v1").chat.completions.create(model="m", messages=[{"role": "user", "content": said}])
        (call,) = store.query()
    assert api.requests[-1]["body"]["messages"][0]["content"] == said  # forwarded unmasked
    assert out.choices[0].message.content == answer  # returned unmasked
    assert call.request["messages"][0]["content"] == (
        "I am [email], call [phone], card [card], ref 4111 1111 1111 1112"  # the last one fails the Luhn check
    )
    assert call.answer == "We wrote to [email]" == call.response["choices"][0]["message"]["content"]


# --- shadow mode and the report ------------------------------------------------------------------------------


def wait_for(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_shadow_answers_are_stored_off_the_request_path_and_reported(tmp_path: Path) -> None:
    questions = [f"q{i}" for i in range(10)]
    api_answers = {q: f"label{i % 3}" for i, q in enumerate(questions)}
    local_answers = {q: (a if i < 7 else "other") for i, (q, a) in enumerate(api_answers.items())}  # 7 of 10 agree
    with FakeOpenAI(api_answers) as api, FakeOpenAI(local_answers, latency_s=1.5) as local:
        shadow = Upstream(local.url, "small-model", None)
        with proxy(api.url, str(tmp_path / "t.db"), shadow=shadow) as (p, store):
            c = client(f"{p.url}/v1")
            t0 = time.monotonic()
            out = c.chat.completions.create(model="m", messages=[{"role": "user", "content": questions[0]}])
            assert time.monotonic() - t0 < 1.2  # the client did not wait for the 1.5 s local model
            assert out.choices[0].message.content == "label0"
            for q in questions[1:]:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": q}])
            wait_for(lambda: sum(x.shadow is not None for x in store.query()) == 10, timeout_s=30)
            assert metric(p.url, "offramp_capture_shadow_total", outcome="stored") == 10
            calls = store.query()
            body = rep.build(store)
    assert {r["body"]["model"] for r in local.requests} == {"small-model"}
    assert [x.shadow for x in calls] == [local_answers[x.request["messages"][0]["content"]] for x in calls]
    agreement = body["groups"][0]["shadow"]
    lo, hi = binomtest(7, 10).proportion_ci(method="wilson")
    assert (agreement["agree"], agreement["n"]) == (7, 10)
    assert agreement["rate"] == pytest.approx(0.7) and agreement["ci95"] == pytest.approx([lo, hi], abs=1e-6)
    (day,) = agreement["daily"].values()
    assert (day["agree"], day["n"]) == (7, 10)


def test_report_agreement_per_day_and_none_without_shadows(tmp_path: Path) -> None:
    import datetime as dt

    store = open_store(tmp_path / "t.db")
    t = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    rows = [(t, "a", "a"), (t, "b", " b "), (t, "c", "x"), (t + dt.timedelta(days=1), "d", "y"), (t, "e", None)]
    for i, (when, answer, shadow) in enumerate(rows):
        store.record(Call(request={"i": i}, time=when, answer=answer, shadow=shadow, model="m"))
    agreement = rep.build(store)["groups"][0]["shadow"]
    assert (agreement["agree"], agreement["n"]) == (2, 4)  # stripped exact match; the call without one is left out
    assert {d: (v["agree"], v["n"]) for d, v in agreement["daily"].items()} == {
        "2026-11-30": (2, 3),
        "2026-12-01": (0, 1),
    }
    lo, hi = binomtest(0, 1).proportion_ci(method="wilson")
    assert agreement["daily"]["2026-12-01"]["ci95"] == pytest.approx([lo, hi], abs=1e-6)
    out = tmp_path / "report"
    rep.write(out, rep.build(store))
    assert "agreement with the API" in (out / "report.html").read_text()
    store.record(Call(request={"i": 9}, time=t, answer="z", model="other"))
    assert next(g for g in rep.build(store)["groups"] if g["model"] == "other")["shadow"] is None
    store.close()


# --- kill -9 ---------------------------------------------------------------------------------------------------


def test_every_answered_call_survives_kill_9(tmp_path: Path) -> None:
    db, port = tmp_path / "t.db", free_port()
    answer = lambda msgs: f"answer to {msgs[-1]['content']}"  # noqa: E731
    with FakeOpenAI(answer, latency_s=0.01, stream_style="openai") as api:
        env = {k: v for k, v in os.environ.items() if k != "OFFRAMP_UPSTREAM_API_KEY"}
        cmd = [sys.executable, "-m", "offramp", "capture", "--upstream", api.url, "--store", str(db), "--port"]
        proc = subprocess.Popen([*cmd, str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), timeout_s=60)
            answered, failed = _fire_until_killed(f"http://127.0.0.1:{port}/v1", proc, n_threads=32)
        finally:
            proc.kill()
            proc.wait()
    assert len(answered) >= 20 and failed >= 1, (len(answered), failed)  # killed with calls in flight
    store = open_store(db, create=False)
    stored = {c.request["messages"][-1]["content"]: c.answer for c in store.query()}
    store.close()
    missing = [q for q in answered if stored.get(q) != f"answer to {q}"]
    assert not missing, f"{len(missing)} of {len(answered)} answered calls are not in the store: {missing[:5]}"


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ask(c: openai.OpenAI, q: str, stream: bool) -> str:
    messages = [{"role": "user", "content": q}]
    if not stream:
        return c.chat.completions.create(model="m", messages=messages).choices[0].message.content
    chunks = c.chat.completions.create(model="m", messages=messages, stream=True)
    return "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)  # complete once [DONE] came


def _fire_until_killed(base_url: str, proc: subprocess.Popen, n_threads: int) -> tuple[list[str], int]:
    """Threads send calls (half of them streamed) back to back; once 30 are answered the proxy gets SIGKILL while
    the others are in flight."""
    answered: list[str] = []
    failed = [0]
    lock, stop = threading.Lock(), threading.Event()

    def work(t: int) -> None:
        c = client(base_url)
        for i in range(10_000):
            if stop.is_set():
                return
            q = f"t{t}-{i}"
            try:
                text = _ask(c, q, stream=t % 2 == 1)
            except (openai.APIError, httpx.HTTPError):  # a stream cut mid-way raises httpx's own error
                with lock:
                    failed[0] += 1
                return
            assert text == f"answer to {q}"
            with lock:
                answered.append(q)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    wait_for(lambda: len(answered) >= 30, timeout_s=60)
    proc.send_signal(signal.SIGKILL)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    return list(answered), failed[0]


# --- parsing the upstream, and the CLI's one-line errors ----------------------------------------------------------


def test_upstream_specs(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    up = Upstream.parse("openai", flag="--upstream", url_key_env="K", model=False)
    assert (up.base_url, up.model, up.key_env, up.provider) == (
        "http://127.0.0.1:9/v1",
        None,
        "OPENAI_API_KEY",
        "openai",
    )
    assert Fallback.parse("openai:gpt-4o-mini").base_url == "http://127.0.0.1:9/v1"  # the cascade honours it too
    with pytest.raises(OfframpError, match="requests keep their own model"):
        Upstream.parse("openai:gpt-4o-mini", flag="--upstream", url_key_env="K", model=False)
    with pytest.raises(OfframpError, match="expected openai, anthropic or URL"):
        Upstream.parse("mistral", flag="--upstream", url_key_env="K", model=False)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offramp", "capture", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite")
    cases = [
        (["--upstream", "anthropic", "--store", str(tmp_path / "a.db")], "ANTHROPIC_API_KEY (not set)"),
        (["--upstream", "http://x/v1", "--store", str(bad)], "not an offramp traffic store"),
        (["--upstream", "http://x/v1", "--store", "s.db", "--api-key", "sk-123"], "NAME of an environment variable"),
        (["--upstream", "http://x/v1", "--store", "s.db", "--shadow", "small"], "http://host:port/v1#MODEL"),
    ]
    for args, message in cases:
        r = run_cli(*args, env=env)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
