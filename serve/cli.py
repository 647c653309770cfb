"""`offramp serve` and `offramp bench`. Heavy imports stay inside the commands so `offramp --help` stays fast."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from offramp.errors import OfframpError

CASCADE = "Cascade router"  # help panel of the --cascade options


def _opt(help: str, *names: str, **kw: object) -> object:
    return typer.Option(*names, help=help, **kw)


def _cascade_opt(help: str, *names: str) -> object:
    return typer.Option(*names, help=help, rich_help_panel=CASCADE)


def _serve(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="store name, checkpoint dir or hub id")],
    adapter: Annotated[
        list[str] | None, _opt("LoRA adapter NAME=DIR (repeatable); served as model NAME", "--adapter")
    ] = None,
    host: Annotated[str, _opt("bind address; loopback unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, _opt("port to listen on")] = 8000,
    api_key: Annotated[str | None, _opt("NAME of the env var holding the API key (never the key)", "--api-key")] = None,
    max_model_len: Annotated[int | None, _opt("context length (default: the model's)")] = None,
    tp: Annotated[int, _opt("tensor parallel size (vLLM --tensor-parallel-size)", "--tp")] = 1,
    dp: Annotated[int, _opt("data parallel size (vLLM --data-parallel-size)", "--dp")] = 1,
    name: Annotated[str | None, _opt("served model name (default: the store name or dir name)")] = None,
    enable_lora: Annotated[bool, _opt("allow LoRA adapters to be hot-loaded later")] = False,
    eager: Annotated[
        bool | None, _opt("default: eager on CPU (correct there), compiled on CUDA", "--eager/--compiled")
    ] = None,
    startup_timeout: Annotated[float, _opt("seconds to wait for /health")] = 900.0,
    log: Annotated[Path | None, _opt("vLLM's log file (default: a temp file)")] = None,
    cascade: Annotated[
        bool, _cascade_opt("serve a cascade router: local answer if confident, else --fallback", "--cascade")
    ] = False,
    fallback: Annotated[
        str | None, _cascade_opt("fallback API: openai:MODEL, anthropic:MODEL or http://host:port/v1#MODEL")
    ] = None,
    threshold: Annotated[
        float | None, _cascade_opt("keep the local answer when P(answer | prompt) >= this, in [0, 1]")
    ] = None,
    labels: Annotated[
        str | None, _cascade_opt("labels.json (or banking77): constrain local answers to these labels")
    ] = None,
    cascade_port: Annotated[
        int | None, _cascade_opt("the router's port (default: --port; vLLM then takes a free one)")
    ] = None,
    local_url: Annotated[
        str | None,
        _cascade_opt("put the router in front of this running server (http://host:port/v1); MODEL is its model"),
    ] = None,
    fallback_timeout: Annotated[
        float, _cascade_opt("seconds the fallback may take, retries included, before degrading")
    ] = 30.0,
    fallback_retries: Annotated[int, _cascade_opt("fallback retries after the first attempt")] = 2,
) -> None:
    """Serve MODEL (+ LoRA adapters) with vLLM's OpenAI-compatible server, prefix caching on, until Ctrl-C.

    Anything after `--` goes to vLLM unchanged, e.g. `offramp serve MODEL -- --max-num-seqs 16`. Multi-node
    (Ray) and other scale-out settings are vLLM's own flags: pass them there.

    With --cascade, one OpenAI-compatible endpoint answers with the local model when it is confident enough and
    forwards the request to --fallback otherwise (see serve/README.md, "Cascade router").
    """
    vllm_options = {
        "max_model_len": max_model_len,
        "tensor_parallel": tp,
        "data_parallel": dp,
        "enable_lora": True if enable_lora else None,
        "enforce_eager": eager,
        "extra_args": list(ctx.args),
        "startup_timeout": startup_timeout,
        "log_path": log,
    }
    chat_face = _is_classifier(model) and not (cascade or local_url or fallback or threshold is not None)
    if chat_face or cascade or local_url or fallback or threshold is not None:
        return _serve_cascade(
            model,
            cascade=cascade or chat_face,
            adapter=adapter or [],
            host=host,
            port=cascade_port or port,
            api_key=api_key,
            name=name,
            fallback=fallback,
            threshold=threshold,
            labels=labels,
            local_url=local_url,
            fallback_timeout=fallback_timeout,
            fallback_retries=fallback_retries,
            vllm_options=vllm_options,
        )
    _serve_vllm(model, adapter or [], host=host, port=port, api_key=api_key, name=name, vllm_options=vllm_options)


def _is_classifier(model: str) -> bool:
    from offramp.store import is_sequence_classifier, model_dir

    return is_sequence_classifier(Path(model) if Path(model).is_dir() else model_dir(model))


def _serve_vllm(
    model: str, adapter: list[str], *, host: str, port: int, api_key: str | None, name: str | None, vllm_options: dict
) -> None:
    """Plain `offramp serve`: vLLM in the foreground on --host/--port until Ctrl-C or SIGTERM."""
    from offramp.serve.server import api_key_from_env, parse_adapters
    from offramp.store import resolve_model

    # Everything checkable is checked before paying for the runtime environment and a server start.
    path = resolve_model(model)
    adapters = parse_adapters(adapter)
    api_key_from_env(api_key)
    if vllm_options["tensor_parallel"] < 1 or vllm_options["data_parallel"] < 1:
        raise OfframpError("--tp and --dp must be at least 1")
    from offramp.envs import require_env

    require_env("runtime")
    from offramp.serve.server import VllmServer

    served = name or (model if Path(path).name == model else Path(path).name)
    server = VllmServer(
        path, adapters=adapters, host=host, port=port, api_key_env=api_key, served_model_name=served, **vllm_options
    )
    # SIGTERM (systemd, docker stop, kill) stops the server as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"offramp: starting vLLM for {path} on {host}:{port}", file=sys.stderr)
    try:
        with server:
            _print_ready(server, api_key)
            code = server.wait()
            raise OfframpError(f"vLLM exited unexpectedly with code {code}; {server.log_tail_text()}")
    except KeyboardInterrupt:
        print("offramp: stopped the server", file=sys.stderr)


def _serve_cascade(
    model: str,
    *,
    cascade: bool,
    adapter: list[str],
    host: str,
    port: int,
    api_key: str | None,
    name: str | None,
    fallback: str | None,
    threshold: float | None,
    labels: str | None,
    local_url: str | None,
    fallback_timeout: float,
    fallback_retries: int,
    vllm_options: dict,
) -> None:
    """`offramp serve --cascade`: vLLM on an internal loopback port (or the server at --local-url) behind the
    cascade router, which is the public endpoint on --host/--cascade-port. A sequence-classification checkpoint is
    served this way even without --cascade: the router is its chat face, and with no --fallback it answers all."""
    if fallback is not None or threshold is not None or not _is_classifier(model):
        _check_cascade_args(cascade, fallback, threshold, local_url)
    key, adapters, path = _cascade_inputs(model, adapter, api_key, local_url, host, port)
    from offramp.envs import require_env

    require_env("runtime")
    from offramp.data import label_list
    from offramp.serve.cascade import CascadeSettings, Fallback, local_kind, probe_local
    from offramp.store import classifier_labels

    def settings(url: str, local_model: str, kind: str = "chat") -> CascadeSettings:
        named = label_list(labels, "--labels") if labels else None
        if named is None and kind == "classify" and path:
            named = classifier_labels(path)  # the checkpoint's id2label
        return CascadeSettings(
            local_url=url.rstrip("/"),
            local_model=local_model,
            fallback=Fallback.parse(fallback) if fallback else None,
            threshold=0.0 if threshold is None else threshold,
            labels=named,
            local_api_key=key,
            retries=fallback_retries,
            fallback_timeout_s=fallback_timeout,
            local_kind=kind,
        )

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if local_url is not None:
            cfg = settings(local_url, model, local_kind(local_url.rstrip("/"), key))
            probe_local(cfg)
            _run_router(cfg, host, port, api_key, None)
            return
        from offramp.serve.server import VllmServer

        cfg = settings("http://127.0.0.1:0/v1", model)  # checks the fallback and labels before vLLM starts
        served = name or (model if Path(path).name == model else Path(path).name)
        server = VllmServer(
            path, adapters=adapters, port=None, api_key_env=api_key, served_model_name=served, **vllm_options
        )
        print(f"offramp: starting vLLM for {path} on an internal loopback port", file=sys.stderr)
        with server:
            kind = "classify" if server.pooling else "chat"
            cfg = settings(server.api_base, next(iter(adapters), served), kind)  # the tuned adapter when given
            probe_local(cfg)
            print(f"vLLM: {server.api_base} (ready in {server.startup_s:.0f} s; log: {server.log_path})")
            _run_router(cfg, host, port, api_key, server)
            raise OfframpError(f"vLLM exited unexpectedly with code {server.wait()}; {server.log_tail_text()}")
    except KeyboardInterrupt:
        print("offramp: stopped the cascade", file=sys.stderr)


def _cascade_inputs(
    model: str, adapter: list[str], api_key: str | None, local_url: str | None, host: str, port: int
) -> tuple[str | None, dict[str, Path], str | None]:
    """Checked before the runtime env starts: the key, the adapters, the model's path (None with --local-url), the
    router's port."""
    from offramp.serve.server import api_key_from_env, parse_adapters, port_is_free

    key = api_key_from_env(api_key)
    adapters = parse_adapters(adapter)
    if local_url is None and len(adapters) > 1:
        raise OfframpError("--cascade routes to one local candidate: give at most one --adapter (the tuned model)")
    path = None
    if local_url is None:
        from offramp.store import resolve_model

        path = resolve_model(model)
    if not port_is_free(host, port):
        raise OfframpError(f"port {port} on {host} is already in use; pick another with --cascade-port")
    return key, adapters, path


def _check_cascade_args(cascade: bool, fallback: str | None, threshold: float | None, local_url: str | None) -> None:
    if not cascade:
        raise OfframpError("--fallback, --threshold and --local-url configure the cascade: add --cascade")
    if fallback is None or threshold is None:
        raise OfframpError("--cascade needs --fallback (openai:MODEL, anthropic:MODEL or URL#MODEL) and --threshold")
    if not 0 <= threshold <= 1:
        raise OfframpError(f"--threshold must be in [0, 1], got {threshold}")
    if local_url is not None and not local_url.startswith(("http://", "https://")):
        raise OfframpError(f"--local-url takes the server's base URL, e.g. http://127.0.0.1:8000/v1, got {local_url!r}")


def _run_router(cfg, host: str, port: int, api_key_env: str | None, server) -> None:
    """Print where the cascade answers, then serve it in the foreground until Ctrl-C (or until vLLM dies)."""
    from offramp.serve.cascade import Router

    router = Router(cfg, host=host, port=port)
    auth = f' -H "Authorization: Bearer ${api_key_env}"' if api_key_env else ""
    body = {"model": "offramp-cascade", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}

    def ready() -> None:
        head = "classifier" if cfg.local_kind == "classify" else "local"
        if cfg.fallback is None:
            print(f"chat endpoint: {router.url}/v1  ({head}: {cfg.local_model} at {cfg.local_url}; no fallback)")
        else:
            print(
                f"cascade endpoint: {router.url}/v1  ({head}: {cfg.local_model} at {cfg.local_url}; fallback: "
                f"{cfg.fallback.model} at {cfg.fallback.base_url}; threshold {cfg.threshold:g})"
            )
        if cfg.local_kind == "classify":
            print(f"classify: {router.url}/classify  (vLLM's pooling API: every label's probability)")
        print(f"metrics: {router.url}/metrics  (offramp_cascade_requests_total by route)")
        print(
            f"try: curl -i {router.url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d {shlex.quote(json.dumps(body))}"
        )
        print("Ctrl-C stops it.", flush=True)

    router.run(keep_going=server.alive if server is not None else None, on_ready=ready)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_ready(server, api_key_env: str | None) -> None:
    auth = f' -H "Authorization: Bearer ${api_key_env}"' if api_key_env else ""
    body = {"model": server.model_name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
    names = [server.model_name, *server.adapters]
    print(f"endpoint: {server.api_base}  (models: {', '.join(names)}; ready in {server.startup_s:.0f} s)")
    print(f"vLLM log: {server.log_path}")
    print(
        f"try: curl {server.api_base}/chat/completions -H 'Content-Type: application/json'{auth} "
        f"-d {shlex.quote(json.dumps(body))}"
    )
    print("Ctrl-C stops it.", flush=True)


def _bench(
    endpoint: Annotated[
        str, typer.Argument(help="base URL of an OpenAI-compatible vLLM server, e.g. http://127.0.0.1:8000")
    ],
    workload: Annotated[
        str | None, typer.Option(help="banking77, or a JSONL file of chat records or {'prompt': …} lines")
    ] = None,
    traffic: Annotated[
        str | None, typer.Option(help="or: STORE[?tag=T&model=M&since=ISO&until=ISO]: replay captured requests")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrency levels to sweep")] = "1,4,8",
    num_prompts: Annotated[int, typer.Option(help="requests per level")] = 32,
    output_len: Annotated[int, typer.Option(help="max tokens per answer")] = 64,
    ignore_eos: Annotated[bool, typer.Option(help="always generate --output-len tokens")] = False,
    slo_p99_ttft_s: Annotated[float, typer.Option(help="SLO: p99 time to first token, seconds")] = 2.0,
    slo_p99_tpot_ms: Annotated[float, typer.Option(help="SLO: p99 time per output token, ms")] = 200.0,
    structured_choice: Annotated[
        str | None, typer.Option(help="labels.json (or banking77): constrain answers to these labels")
    ] = None,
    model: Annotated[str | None, typer.Option(help="served model or adapter name (default: the first served)")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer path (default: the served model's root)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="NAME of the env var holding the API key")] = None,
    host: Annotated[str | None, typer.Option(help="named host in the price catalogue")] = None,
    host_price_per_hour: Annotated[float | None, typer.Option(help="USD per hour for the host")] = None,
    utilisation: Annotated[float, typer.Option(help="realistic share of paid time the host is busy")] = 0.5,
    cost_split: Annotated[str, typer.Option(help="input/output cost split: measured, or ratio:K")] = "measured",
    out: Annotated[Path | None, typer.Option(help="output dir (default: runs/bench-<time>)")] = None,
    timeout_s: Annotated[float, typer.Option(help="give up on the whole sweep after this many seconds")] = 3600.0,
    force: Annotated[bool, typer.Option(help="replace --out even if offramp did not write it")] = False,
) -> None:
    """Sweep load with vLLM's own `vllm bench serve`; find the highest load meeting the SLO; $ per 1M tokens.

    The load is --workload's prompts, or with --traffic the requests captured in a traffic store (oldest first,
    cycled to --num-prompts), each capped at its own max_tokens (else the answer length the API returned). A
    classifier endpoint (`offramp serve CLASSIFIER`, or vLLM's pooling runner) is driven through /pooling and priced
    per request: it generates no tokens."""
    from offramp.data import label_list
    from offramp.paths import check_out
    from offramp.serve.bench import BenchSettings, normalise_endpoint
    from offramp.serve.pricing import host_price, parse_split
    from offramp.serve.server import api_key_from_env

    try:
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
    except ValueError:
        raise OfframpError(f"--concurrency takes integers like 1,4,8, got {concurrency!r}") from None
    normalise_endpoint(endpoint)
    parse_split(cost_split)
    price = host_price(host, host_price_per_hour)
    key = api_key_from_env(api_key)
    choices = label_list(structured_choice, "--structured-choice") if structured_choice else None
    _check_load(workload, traffic)
    if out is not None:
        check_out(out, force=force)
    from offramp.envs import require_env

    require_env("runtime")
    from offramp.serve.bench import default_out_dir, run_bench

    settings = BenchSettings(
        endpoint=endpoint,
        workload=workload or "",
        traffic=traffic,
        concurrency=levels,
        num_prompts=num_prompts,
        output_len=output_len,
        ignore_eos=ignore_eos,
        slo_p99_ttft_s=slo_p99_ttft_s,
        slo_p99_tpot_ms=slo_p99_tpot_ms,
        structured_choice=choices,
        structured_choice_source=structured_choice,
        model=model,
        tokenizer=tokenizer,
        api_key=key,
        api_key_env=api_key,
        timeout_s=timeout_s,
    )
    out = out or default_out_dir()
    report = run_bench(settings, out, price=price, utilisation=utilisation, split=cost_split, force=force)
    _print_summary(report, out)


def _check_load(workload: str | None, traffic: str | None) -> None:
    """Exactly one load: a prompt file (or banking77), or captured traffic whose window holds requests."""
    if (workload is None) == (traffic is None):
        raise OfframpError("give the load: --workload FILE (or banking77), or --traffic STORE[?tag=…]; not both")
    if traffic is not None:
        from offramp.traffic.workload import replay_prompts

        replay_prompts(traffic)  # a bad spec, store or empty window fails here, before the runtime env starts
    elif workload != "banking77" and not Path(workload).is_file():
        raise OfframpError(f"--workload {workload}: no such file (a JSONL file, or banking77)")


def _print_summary(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['model']} @ {report['endpoint']} (measured here)")
    for col in ("conc.", "req/s", "out tok/s", "total tok/s", "TTFT p99 ms", "TPOT p99 ms", "prefix hit", "SLO"):
        t.add_column(col)
    for p in report["points"]:
        hr = p["prefix_cache_hit_rate"]
        t.add_row(
            str(p["concurrency"]),
            f"{p['requests_per_s']:.2f}",
            f"{p['output_tokens_per_s']:.1f}",
            f"{p['total_tokens_per_s']:.1f}",
            f"{p['ttft_ms']['p99']:.0f}",
            f"{p['tpot_ms']['p99']:.1f}",
            "-" if hr is None else f"{hr:.0%}",
            "yes" if p["meets_slo"] else "no",
        )
    console = Console()
    console.print(t)
    s = report["sustainable"]
    console.print(
        f"sustainable (highest load meeting p99 TTFT <= {report['slo']['p99_ttft_s']} s, "
        f"p99 TPOT <= {report['slo']['p99_tpot_ms']} ms): "
        + (f"concurrency {s['concurrency']}, {s['output_tokens_per_s']:.1f} output tok/s" if s else "none")
    )
    cost = report.get("cost")
    if cost and "fully_utilised_floor" in cost:
        f, u = cost["fully_utilised_floor"], cost["at_utilisation"]
        hp = cost["host_price"]
        if f["output"] is None:  # a classifier: no output tokens, a request costs its input only
            console.print(
                f"$ per 1M requests at {hp['value']} USD/h ({hp['source']}): floor {f['per_million_requests']:.4f}, "
                f"at {cost['utilisation']:.0%} utilisation {u['per_million_requests']:.4f} (input "
                f"{f['input']:.4f} per 1M tokens)"
            )
        else:
            console.print(
                f"$ per 1M tokens at {hp['value']} USD/h ({hp['source']}): floor input {f['input']:.4f}, output "
                f"{f['output']:.4f}; at {cost['utilisation']:.0%} utilisation input {u['input']:.4f}, "
                f"output {u['output']:.4f}"
            )
        console.print(f"split rule: {cost['split_rule']}")
    elif cost:
        console.print(f"cost: {cost['error']}")
    console.print(f"report: {out / 'bench_report.json'}")


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_serve)
    app.command("bench")(_bench)
