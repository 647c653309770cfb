"""`offramp bench`: drive an OpenAI-compatible vLLM endpoint with vLLM's own benchmark, sweep the load, find the
highest load that meets a latency SLO, read the prefix-cache hit rate from /metrics, and price the result.

The load comes from `vllm bench serve` (custom dataset: the user's prompts, rendered with the model's chat
template here so system prompts, and with them prefix caching, are kept), never from a home-made generator.
With `--traffic STORE[?tag=…]` the prompts are captured requests (their messages as the client sent them), each
capped at its own max_tokens, or at the answer length the API returned when the request set none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from offramp.errors import OfframpError
from offramp.hardware import hardware_info
from offramp.paths import atomic_dir
from offramp.serve.server import log_tail

COUNTERS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class BenchSettings:
    endpoint: str
    workload: str
    concurrency: list[int]
    num_prompts: int = 32
    output_len: int = 64
    ignore_eos: bool = False
    slo_p99_ttft_s: float = 2.0
    slo_p99_tpot_ms: float = 200.0
    structured_choice: list[str] | None = None
    structured_choice_source: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    seed: int = 0
    timeout_s: float = 3600.0
    traffic: str | None = None  # STORE[?tag=…]: replay captured requests instead of `workload`


# --- the endpoint ---------------------------------------------------------------------------------------------
def normalise_endpoint(endpoint: str) -> str:
    url = endpoint.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    for suffix in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
            break
    if not urlparse(url).hostname:
        raise OfframpError(f"not an endpoint URL: {endpoint!r} (expected e.g. http://127.0.0.1:8000)")
    return url


def endpoint_info(base: str, api_key: str | None) -> dict[str, Any]:
    """The served models and vLLM version; an unreachable or non-vLLM endpoint is one clear error."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{base}/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise OfframpError(f"endpoint {base} is unreachable ({type(e).__name__}: {e}); is the server up?") from None
    if r.status_code == 401:
        raise OfframpError(f"endpoint {base} wants an API key: pass --api-key ENV_VAR_NAME")
    if r.status_code != 200:
        raise OfframpError(f"endpoint {base}/v1/models answered HTTP {r.status_code}; not an OpenAI-compatible server?")
    models = r.json().get("data") or []
    if not models:
        raise OfframpError(f"endpoint {base} serves no models")
    version = None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        version = httpx.get(f"{base}/version", timeout=5).json().get("version")
    return {"models": models, "vllm_version": version}


def scrape_metrics(base: str) -> dict[str, float]:
    """vLLM's Prometheus counters we need, summed over their label sets."""
    try:
        r = httpx.get(f"{base}/metrics", timeout=10)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise OfframpError(f"could not read {base}/metrics ({type(e).__name__}: {e})") from None
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


def delta(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: metrics["after"].get(k, 0.0) - metrics["before"].get(k, 0.0) for k in COUNTERS}


def hit_rate(d: dict[str, float]) -> float | None:
    q = d["vllm:prefix_cache_queries_total"]
    return d["vllm:prefix_cache_hits_total"] / q if q > 0 else None


# --- the workload ---------------------------------------------------------------------------------------------
def workload_messages(source: str, n: int) -> tuple[list[list[dict] | str], str]:
    """The prompts to send: chat message lists (rendered later) or raw prompt strings; plus a description."""
    from offramp.data import Example, per_label_subset, system_prompt, validate_record

    if source == "banking77":
        from offramp.data import builtin_splits

        _, test, labels = builtin_splits("banking77")
        system = system_prompt(labels, "labels")  # the long shared system prompt a classifier really sends
        chosen: list[Example] = per_label_subset(test, None, 0)[:n]
        prompts: list[list[dict] | str] = [
            [{"role": "system", "content": system}, {"role": "user", "content": e.text}] for e in chosen
        ]
        return prompts, "banking77 test split, system prompt listing all 77 labels"
    path = Path(source)
    if not path.is_file():
        raise OfframpError(f"--workload {source}: no such file (a chat JSONL / prompt JSONL file, or banking77)")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise OfframpError(f"{path}:{i}: not valid JSON ({e})") from None
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                prompts.append(obj["prompt"])
                continue
            rec = validate_record(obj, f"{path}:{i}", need_assistant=False)
            msgs = rec["messages"]
            prompts.append(msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)
    if not prompts:
        raise OfframpError(f"{path}: no prompts")
    return prompts, f"{path.name} ({len(prompts)} prompts; chat records drop their final assistant answer)"


def traffic_messages(spec: str) -> tuple[list[list[dict] | str], list[int | None], dict[str, Any]]:
    """The captured requests of a traffic spec: prompts, their output caps (None: --output-len), provenance."""
    from offramp.traffic.workload import replay_prompts

    items, info = replay_prompts(spec)
    return [i.get("messages") or i["prompt"] for i in items], [i["max_tokens"] for i in items], info


def _render_chat(tok: Any, messages: list[dict], tokenizer_ref: str, i: int) -> str:
    from jinja2 import TemplateError

    try:
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except (TemplateError, TypeError, ValueError, KeyError) as e:  # e.g. content parts a text template cannot take
        raise OfframpError(
            f"prompt {i + 1}: the chat template of {tokenizer_ref} cannot render its messages "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def render_workload(s: BenchSettings, tokenizer_ref: str, dest: Path) -> dict[str, Any]:
    """Write vLLM bench's custom dataset (one {"prompt": text} per line, chat template applied) with exactly
    num_prompts lines; replayed traffic also gives each line its own "output_tokens" (the request's cap)."""
    from transformers import AutoTokenizer

    caps: list[int | None] = []
    traffic: dict[str, Any] = {}
    if s.traffic is not None:
        prompts, caps, traffic = traffic_messages(s.traffic)
        description = traffic["description"]
    else:
        prompts, description = workload_messages(s.workload, s.num_prompts)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_ref)
    except Exception as e:  # transformers raises many types for a missing or broken tokenizer
        raise OfframpError(f"cannot load tokenizer {tokenizer_ref!r} ({type(e).__name__}); pass --tokenizer") from None
    lines = []
    for i in range(s.num_prompts):  # cycle through the prompts when there are fewer than n
        p = prompts[i % len(prompts)]
        line: dict[str, Any] = {"prompt": p if isinstance(p, str) else _render_chat(tok, p, tokenizer_ref, i)}
        if caps:
            line["output_tokens"] = caps[i % len(caps)] or s.output_len
        lines.append(line)
    lens = [len(tok(line["prompt"]).input_ids) for line in lines]
    with open(dest, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    out = [line["output_tokens"] for line in lines if "output_tokens" in line]
    return {
        "source": traffic.get("source", s.workload),
        "description": description,
        "distinct_prompts": len(prompts),
        "requests_per_level": s.num_prompts,
        "prompt_tokens_per_level": sum(lens),
        "prompt_tokens_mean": sum(lens) / len(lens),
        **({"max_output_tokens_mean": sum(out) / len(out), "traffic": traffic} if traffic else {}),
        "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
    }


# --- one sweep ------------------------------------------------------------------------------------------------
def vllm_bench_argv(
    s: BenchSettings, base: str, model: str, tokenizer: str, dataset: Path, kind: str = "chat"
) -> list[str]:
    argv = ["--base-url", base, "--model", model, "--tokenizer", tokenizer, "--dataset-name", "custom"]
    argv += ["--dataset-path", str(dataset), "--skip-chat-template", "--disable-shuffle"]
    argv += ["--num-prompts", str(s.num_prompts), "--seed", str(s.seed), "--save-result", "--save-detailed"]
    argv += ["--disable-tqdm", "--label", "offramp"]
    if kind == "classify":
        return argv + _pooling_argv()
    return argv + _generation_argv(s)


def _pooling_argv() -> list[str]:
    # vLLM 0.32's bench drives pooling models through POST /pooling (its URL must end in "pooling"); task classify
    # runs the same score head and softmax as /classify. The prompt is already chat-templated (as /classify's
    # messages would be rendered), so no special tokens are added again. A classifier has one latency: end to end.
    argv = ["--backend", "vllm-pooling", "--endpoint", "/pooling", "--custom-output-len", "1"]
    argv += ["--percentile-metrics", "e2el", "--metric-percentiles", "50,99"]
    return argv + ["--extra-body", json.dumps({"task": "classify", "add_special_tokens": False})]


def _generation_argv(s: BenchSettings) -> list[str]:
    ttft_ms, tpot_ms = s.slo_p99_ttft_s * 1000, s.slo_p99_tpot_ms
    argv = ["--backend", "openai", "--endpoint", "/v1/completions"]
    output_len = "-1" if s.traffic is not None else str(s.output_len)  # -1: each line's own output_tokens
    argv += ["--custom-output-len", output_len, "--temperature", "0"]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    argv += ["--goodput", f"ttft:{ttft_ms:g}", f"tpot:{tpot_ms:g}"]
    if s.ignore_eos:
        argv.append("--ignore-eos")
    if s.structured_choice:
        argv += ["--extra-body", json.dumps({"structured_outputs": {"choice": s.structured_choice}})]
    return argv


def run_sweep(s: BenchSettings, base: str, model: str, tokenizer: str, dataset: Path, raw: Path, kind: str) -> None:
    spec = raw / "spec.json"
    argv = vllm_bench_argv(s, base, model, tokenizer, dataset, kind)
    spec.write_text(json.dumps({"argv": argv, "concurrency": s.concurrency, "out_dir": str(raw), "base_url": base}))
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)  # never send an unrelated key to this endpoint
    if s.api_key:
        env["OPENAI_API_KEY"] = s.api_key  # vLLM's bench reads the bearer token from here
    log = raw / "vllm_bench.log"
    with open(log, "wb") as f:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "offramp.serve.vllm_bench", str(spec)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=s.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise OfframpError(f"the benchmark did not finish within {s.timeout_s:.0f} s; {_tail(log)}") from None
    if proc.returncode != 0:
        raise OfframpError(
            f"the benchmark failed (exit {proc.returncode}){_health_note(base)}; no report written; {_tail(log)}"
        )


def _tail(log: Path, n: int = 8) -> str:
    return f"last lines of {log.name}:\n  " + "\n  ".join(log_tail(log, n))


def _health_note(base: str) -> str:
    try:
        ok = httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        ok = False
    return "" if ok else f"; the server at {base} no longer answers /health (did it die?)"


def _pcts(r: dict, metric: str) -> dict[str, float]:
    return {
        "mean": r.get(f"mean_{metric}_ms", 0.0),
        "p50": r.get(f"p50_{metric}_ms", r.get(f"median_{metric}_ms", 0.0)),
        "p99": r.get(f"p99_{metric}_ms", 0.0),
    }


def pooling_as_generation(result: dict, sent: int) -> dict:
    """vLLM bench's result for a pooling load in the shape of a generation one: the answer is whole when it
    arrives (TTFT = end-to-end latency), no token is generated, and the failed count is what did not complete."""
    e2el = {k: v for k, v in result.items() if k.endswith("_e2el_ms")}
    return {
        **result,
        **{k.replace("_e2el_", "_ttft_"): v for k, v in e2el.items()},
        "failed": result.get("failed", sent - result["completed"]),
        "total_output_tokens": 0,
        "output_throughput": 0.0,
    }


def load_point(s: BenchSettings, c: int, result: dict, metrics: dict) -> dict[str, Any]:
    d = delta(metrics)
    dur = result["duration"]
    ttft, tpot = _pcts(result, "ttft"), _pcts(result, "tpot")
    meets = (
        result["failed"] == 0
        and result["completed"] > 0
        and ttft["p99"] <= s.slo_p99_ttft_s * 1000
        and tpot["p99"] <= s.slo_p99_tpot_ms
    )
    point = {
        "concurrency": c,
        "completed": result["completed"],
        "failed": result["failed"],
        "duration_s": dur,
        "requests_per_s": result["request_throughput"],
        "input_tokens": result["total_input_tokens"],
        "output_tokens": result["total_output_tokens"],
        "input_tokens_per_s": result["total_input_tokens"] / dur,
        "output_tokens_per_s": result["output_throughput"],
        "total_tokens_per_s": result["total_token_throughput"],
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "itl_ms": _pcts(result, "itl"),
        "e2el_ms": _pcts(result, "e2el"),
        "request_goodput": result.get("request_goodput"),
        "meets_slo": meets,
        "prefix_cache_hit_rate": hit_rate(d),
        "server_counted": {
            "prompt_tokens": d["vllm:prompt_tokens_total"],
            "generation_tokens": d["vllm:generation_tokens_total"],
            "requests": d["vllm:request_success_total"],
            "prefix_cache_queries": d["vllm:prefix_cache_queries_total"],
            "prefix_cache_hits": d["vllm:prefix_cache_hits_total"],
            "source": "the server's /metrics counters, before vs after this level",
        },
    }
    if s.structured_choice:
        texts = result.get("generated_texts") or []
        allowed = set(s.structured_choice)
        point["valid_choice_rate"] = sum(t.strip() in allowed for t in texts) / len(texts) if texts else None
    return point


def _first_error(result: dict) -> str:
    errs = [e for e in result.get("errors") or [] if e]
    return errs[0].strip().splitlines()[-1][:300] if errs else "(no error text)"


def knee(points: list[dict]) -> dict[str, Any]:
    ok = [p["concurrency"] for p in points if p["meets_slo"]]
    broken = [p["concurrency"] for p in points if not p["meets_slo"]]
    return {
        "highest_meeting_slo": max(ok) if ok else None,
        "lowest_breaking_slo": min(broken) if broken else None,
        "throughput_by_concurrency": {
            str(p["concurrency"]): round(p["output_tokens_per_s"], 2)
            for p in sorted(points, key=lambda p: p["concurrency"])
        },
    }


def check_settings(s: BenchSettings, split: str) -> None:
    from offramp.serve.pricing import parse_split

    parse_split(split)
    if not s.concurrency or any(c < 1 for c in s.concurrency):
        raise OfframpError("--concurrency takes positive integers, e.g. 1,4,8")
    if s.num_prompts < 1 or s.output_len < 1:
        raise OfframpError("--num-prompts and --output-len must be at least 1")


def served_model(s: BenchSettings, base: str, info: dict[str, Any]) -> tuple[str, str | None, str]:
    """(model benched, its root, tokenizer): the requested or first served model; an unserved one is an error."""
    ids = [m["id"] for m in info["models"]]
    model = s.model or ids[0]
    if model not in ids:
        raise OfframpError(f"endpoint {base} does not serve {model!r}; it serves: {', '.join(ids)}")
    roots = {m["id"]: m.get("root") or m["id"] for m in info["models"]}
    base_model = next((m for m in info["models"] if not m.get("parent")), info["models"][0])
    return model, roots.get(model), s.tokenizer or base_model.get("root") or base_model["id"]


def measure_points(
    s: BenchSettings, base: str, model: str, tokenizer: str, raw: Path, kind: str
) -> tuple[dict, list[dict]]:
    """Render the load, sweep it, and read each level's result: (workload description, load points)."""
    dataset = raw / "workload.jsonl"
    workload = render_workload(s, tokenizer, dataset)
    s.concurrency = sorted(set(s.concurrency))
    run_sweep(s, base, model, tokenizer, dataset, raw, kind)
    points = []
    for c in s.concurrency:
        result = json.loads((raw / f"c{c}.json").read_text())
        if kind == "classify":
            result = pooling_as_generation(result, s.num_prompts)
        if result.get("failed") or not result.get("completed"):
            raise OfframpError(
                f"{result.get('failed')} of {s.num_prompts} requests failed at concurrency {c}"
                f"{_health_note(base)}; no report written; first error: {_first_error(result)}"
            )
        points.append(load_point(s, c, result, json.loads((raw / f"c{c}.metrics.json").read_text())))
    return workload, points


def price_points(points: list[dict], price: dict | None, utilisation: float, split: str) -> tuple[dict | None, Any]:
    """(the sustainable point, its $ per 1M tokens at the host price, or why there is none)."""
    from offramp.serve.pricing import cost_per_million

    meeting = [p for p in points if p["meets_slo"]]
    sustainable = max(meeting, key=lambda p: p["concurrency"]) if meeting else None
    if price and sustainable:
        return sustainable, cost_per_million(sustainable, price, utilisation=utilisation, split=split)
    if price:
        return sustainable, {"error": "no load level met the SLO: nothing sustainable to price", "host_price": price}
    return sustainable, None


def _settings_section(s: BenchSettings, tokenizer: str, kind: str) -> dict[str, Any]:
    classifier = kind == "classify"
    return {
        "endpoint_kind": "classifier (vLLM pooling runner)" if classifier else "generative",
        "concurrency": s.concurrency,
        "num_prompts": s.num_prompts,
        "max_output_tokens": (
            0 if classifier else s.output_len if s.traffic is None else "per request (the captured request's cap)"
        ),
        "ignore_eos": s.ignore_eos,
        "temperature": None if classifier else 0,
        "endpoint_path": ("/pooling, task classify" if classifier else "/v1/completions")
        + " (prompts rendered with the model's chat template)",
        "structured_choice": (
            {"labels": len(s.structured_choice), "source": s.structured_choice_source} if s.structured_choice else None
        ),
        "tokenizer": tokenizer,
        "api_key_env": s.api_key_env,
        "load_generator": f"vllm bench serve (vLLM {_local_vllm_version()}), custom dataset",
    }


def _server_section(base: str, info: dict[str, Any]) -> dict[str, Any]:
    loopback = urlparse(base).hostname in LOOPBACK
    return {
        "vllm_version": info["vllm_version"],
        "models": [m["id"] for m in info["models"]],
        "loopback": loopback,
        "hardware": hardware_info() if loopback else None,
        "note": (
            "server and load generator share this host (hardware above); the client takes CPU from the server"
            if loopback
            else "remote endpoint: the top-level hardware is the client's, not the server's"
        ),
    }


def run_bench(
    s: BenchSettings,
    out: Path,
    *,
    price: dict | None = None,
    utilisation: float = 0.5,
    split: str = "measured",
    force: bool = False,
) -> dict[str, Any]:
    """Run the sweep and write `out/bench_report.json` (+ vLLM's raw results) atomically; return the report."""
    from offramp.reports import write_report
    from offramp.serve.cascade import local_kind

    check_settings(s, split)
    base = normalise_endpoint(s.endpoint)
    info = endpoint_info(base, s.api_key)
    kind = local_kind(f"{base}/v1", s.api_key)
    if kind == "classify" and s.structured_choice:
        raise OfframpError(f"--structured-choice constrains generation; {base} is a classifier (it answers with "
                           "one of its labels already): drop the flag")  # fmt: skip
    model, root, tokenizer = served_model(s, base, info)
    with atomic_dir(Path(out), overwrite=True, force=force) as tmp:
        raw = tmp / "raw"
        raw.mkdir()
        workload, points = measure_points(s, base, model, tokenizer, raw, kind)
        sustainable, cost = price_points(points, price, utilisation, split)
        body = {
            "model": model,
            "model_root": root,
            "endpoint": base,
            "slo": {"p99_ttft_s": s.slo_p99_ttft_s, "p99_tpot_ms": s.slo_p99_tpot_ms},
            "points": points,
            "sustainable": sustainable,
            "knee": knee(points),
            "prefix_cache_hit_rate": _overall_hit_rate(points),
            "workload": workload,
            "settings": _settings_section(s, tokenizer, kind),
            "server": _server_section(base, info),
            "server_counted_totals": {
                k: sum(p["server_counted"][k] for p in points) for k in ("prompt_tokens", "generation_tokens")
            },
            "cost": cost,
            "provenance": {
                "points": "measured here with vllm bench serve"
                + (f", replaying {workload['source']}" if s.traffic else ""),
                "prefix_cache_hit_rate": "measured: server /metrics, hits / queries over the whole sweep",
                "host_price": price.get("source") if price else None,
            },
        }
        report = write_report(tmp / "bench_report.json", "bench", body)  # checked against BenchReport first
    return report


def _overall_hit_rate(points: list[dict]) -> float | None:
    queries = sum(p["server_counted"]["prefix_cache_queries"] for p in points)
    hits = sum(p["server_counted"]["prefix_cache_hits"] for p in points)
    return hits / queries if queries else None


def _local_vllm_version() -> str:
    try:
        import vllm

        return vllm.__version__
    except ImportError:
        return "?"


def default_out_dir() -> Path:
    from offramp.reports import now_iso

    return Path("runs") / f"bench-{now_iso().replace(':', '').replace('+0000', 'Z')}"
