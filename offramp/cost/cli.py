"""`offramp breakeven`: API vs self-hosted cost per token and per month, break-even volume, go/no-go."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from offramp.cost.report import OPS_HOURS_PER_MONTH, OPS_RATE_USD
from offramp.errors import OfframpError

Opt = typer.Option


def _load_inputs(
    api: str | None,
    bench: Path,
    host: str | None,
    host_price_per_hour: float | None,
    prices: list[Path] | None,
    pricing: str,
    model: str | None,
    workload_fields: dict[str, Any],
    workload_file: Path | None,
    prompts: Path | None,
    api_prompts: Path | None,
    eval_path: Path | None,
    finetune: Path | None,
    one_off_fields: dict[str, Any],
    **options: Any,
):
    from pydantic import ValidationError

    from offramp.artifacts import load_report
    from offramp.cost.prices import adhoc_host, load_catalogue
    from offramp.cost.report import Inputs, OneOff, Operations, same_model
    from offramp.cost.workload import load_workload

    _check_options(options)
    catalogue = load_catalogue(prices)
    traffic = options.pop("traffic")
    if traffic is not None:
        api, options["traffic"] = _traffic_api(traffic, api, catalogue)
    api_price = catalogue.api_price(api, allow_retired=options.pop("allow_retired"))
    if (host is None) == (host_price_per_hour is None):
        raise OfframpError("give exactly one of --host NAME or --host-price-per-hour USD")
    bench_report = load_report(bench, "bench")
    served = [bench_report.model, *([root] if (root := getattr(bench_report, "model_root", None)) else [])]
    if model is not None and not any(same_model(model, name) for name in served):
        raise OfframpError(f"{bench}: bench report is for model {' = '.join(map(repr, served))}, not {model!r}")
    if host is not None:
        host_name, host_price = host, catalogue.host_price(host)
    else:
        kind = "gpu" if bench_report.hardware.get("gpus") else "cpu"
        host_name, host_price = f"{host_price_per_hour:g} USD/hour", adhoc_host(host_price_per_hour, kind=kind)
    host_price.per_hour(pricing)  # fail now if that pricing is unknown for the host
    _measure_prompts(workload_fields, prompts, api_prompts, model or served[-1])  # model_root over a served alias
    eval_report = load_report(eval_path, "eval") if eval_path is not None else None
    if eval_report is not None and workload_fields.get("reasoning_tokens") is None:
        workload_fields.update(_measured_reasoning(eval_report, api, eval_path))
    stated = workload_file is not None or any(
        workload_fields.get(k) is not None for k in ("input_tokens", "output_tokens")
    )
    defaults = _bench_tokens(bench_report, bench, api_prompts or prompts, model or served[-1], needed=not stated)
    workload = load_workload(workload_file, workload_fields, defaults=defaults)
    if finetune is not None:
        one_off_fields.update(_finetune_one_off(finetune))
    try:
        one_off = OneOff(**one_off_fields)
        operations = Operations(**options.pop("operations"))
    except ValidationError as e:
        first = e.errors()[0]
        raise OfframpError(f"one-off and operations costs: {first['loc'][0]}: {first['msg']}") from None
    return Inputs(
        api_name=api,
        api_price=api_price,
        host_name=host_name,
        host=host_price,
        bench=bench_report,
        bench_path=bench,
        workload=workload,
        pricing=pricing,
        one_off=one_off,
        operations=operations,
        eval=eval_report,
        **options,
    )


def _traffic_fields(flags: dict[str, Any], traffic) -> tuple[dict[str, Any], dict[str, str]]:
    """The workload fields measured from the traffic, each flag given alongside overriding its one figure.
    Returns the fields (with their provenance) and, per overridden figure, what the report says about it."""
    fields, provenance, overridden = dict(flags), {}, {}
    for key, value in traffic.fields.items():
        if flags.get(key) is not None:
            overridden[key] = (
                f"stated by the user (--{key.replace('_', '-')} {flags[key]:g}) over the measured {value:.4g}"
            )
            continue
        fields[key] = value
        provenance[key] = traffic.provenance[key]
    if fields.get("requests_per_month") is None:
        raise OfframpError(
            f"--traffic {traffic.spec.text}: none of the {traffic.calls:,} calls has a known time (imported "
            "without timestamps), so the volume cannot be extrapolated: pass --requests-per-month"
        )
    if fields.get("input_tokens") is None or fields.get("output_tokens") is None:
        raise OfframpError(
            f"--traffic {traffic.spec.text}: the calls report no token usage: pass --input-tokens and --output-tokens"
        )
    for key, source in (
        ("input_tokens", "token_source"), ("api_input_tokens", "api_token_source"),
        ("reasoning_tokens", "reasoning_source"),
    ):  # fmt: skip
        if key in provenance:
            fields[source] = provenance[key]
    return {**fields, "provenance": provenance}, overridden


def _traffic_api(traffic: dict[str, Any], api: str | None, catalogue) -> tuple[str, dict[str, Any]]:
    """The API priced (the catalogue model the traffic used, unless --api names one) and the report's section."""
    from offramp.traffic.workload import api_model

    measured, overridden = traffic["measured"], traffic["overridden"]
    section = {**measured.section(), "overridden": overridden}
    stated = ["--" + k.replace("_", "-") for k in overridden]
    section["warnings"] = [w for w in section["warnings"] if not any(f"pass {flag}" in w for flag in stated)]
    if api is None:
        api = api_model(measured, catalogue)
        section["api"] = f"{api}: the catalogue price of the model the traffic used"
    else:
        section["api"] = f"{api}: stated by the user (--api); the traffic's calls were of " + ", ".join(
            f"{m} ({n:,})" for m, n in measured.models.items()
        )
    return api, section


def _check_options(options: dict[str, Any]) -> None:
    from offramp.cost.model import DEPLOYMENTS

    if options["deployment"] not in DEPLOYMENTS:
        raise OfframpError(f"unknown deployment {options['deployment']!r}; use {' or '.join(DEPLOYMENTS)}")
    for flag in ("autoscale_utilisation", "target_utilisation"):
        if not 0 < options[flag] <= 1:
            raise OfframpError(f"--{flag.replace('_', '-')} must be in (0, 1], got {options[flag]}")
    if options["output_weight"] is not None and options["output_weight"] <= 0:
        raise OfframpError(f"--output-weight must be > 0, got {options['output_weight']}")
    if options["escalation_share"] is not None and not 0 <= options["escalation_share"] <= 1:
        raise OfframpError(f"--escalation-share must be in [0, 1], got {options['escalation_share']}")


def _measure_prompts(fields: dict[str, Any], prompts: Path | None, api_prompts: Path | None, model: str) -> None:
    """Tokens per request counted on the prompts themselves (the small model's, and the API's) into `fields`."""
    from offramp.cost.workload import measure_api_prompts, measure_tokens

    if prompts is not None:
        if fields.get("input_tokens") or fields.get("output_tokens"):
            raise OfframpError("give either --prompts (measure tokens) or --input-tokens/--output-tokens, not both")
        fields.update(measure_tokens(prompts, model))
    if api_prompts is not None:
        if fields.get("api_input_tokens"):
            raise OfframpError("give either --api-prompts (measure them) or --api-input-tokens, not both")
        measured = measure_api_prompts(api_prompts, model)
        shared = measured.pop("api_shared_prefix_share")
        fields.update(measured)
        if fields.get("cached_input_share") is None:  # a prefix every call repeats is what the cache reuses
            fields["cached_input_share"] = shared


def _measure_traffic(
    spec: str | None, flags: dict[str, Any], api: str | None, *conflicting: Path | None
) -> dict[str, Any] | None:
    """With --traffic: the measured workload; without it, --api is required."""
    if spec is None:
        if api is None:
            raise OfframpError("give --api NAME (the API to price), or --traffic STORE to price the API it used")
        return None
    if any(c is not None for c in conflicting):
        raise OfframpError("--traffic measures the workload: give it without --workload, --prompts or --api-prompts")
    from offramp.traffic.workload import load

    measured = load(spec)
    fields, overridden = _traffic_fields(flags, measured)
    return {"measured": measured, "fields": fields, "overridden": overridden}


def _finetune_one_off(finetune: Path) -> dict[str, Any]:
    from offramp.artifacts import load_report

    ft = load_report(finetune, "finetune")
    if ft.run_cost_usd is None:
        return {"finetune_source": f"{finetune} has no run_cost_usd (no host price given): counted as 0"}
    return {"finetune_usd": ft.run_cost_usd, "finetune_source": f"{finetune} run_cost_usd"}


def _measured_reasoning(ev, api: str, path: Path) -> dict[str, Any]:
    """Reasoning tokens per request of the priced API, where the eval measured that API and its usage said."""
    for s in ev.systems:
        spec = s.spec.split("+", 1)[0]
        usage = getattr(s, "usage", None) or {}
        if s.source == "measured" and spec.partition(":")[2] == api and usage.get("reasoning_reported"):
            per = usage["reasoning_tokens"] / usage["reasoning_reported"]
            return {
                "reasoning_tokens": per,
                "reasoning_source": f"measured: {usage['reasoning_reported']} answers of {s.name} in {path}",
            }
    return {}


def _bench_tokens(bench, path: Path, answered: Path | None, model: str, *, needed: bool) -> dict[str, Any]:
    """Tokens per request of the bench's own requests: the default token mix when none is given. A classifier's
    bench generates nothing, but the API it replaces answers with the label: its output tokens are then counted on
    the answers of `answered` (the API's prompts with their labels), or the user states them (`needed` False: the
    flags or a workload file give the token mix)."""
    point = bench.sustainable or next((p for p in bench.points if p.completed > 0), None)
    if point is None or point.completed <= 0:
        return {}
    tokens = {
        "input_tokens": point.input_tokens / point.completed,
        "output_tokens": point.output_tokens / point.completed,
        "token_source": f"measured: mean of the {point.completed} requests of the load point in {path}",
    }
    from offramp.cost.model import generates_nothing

    if generates_nothing(point):
        from offramp.cost.workload import measure_tokens

        if answered is None:
            if not needed:  # the flags or the workload file state the token mix
                return tokens
            raise OfframpError(
                f"{path} is a classifier's bench (no output tokens), but the API answers in tokens: pass "
                "--output-tokens (the label's length), or --api-prompts / --prompts with the answers"
            )
        labels = measure_tokens(answered, model)
        tokens["output_tokens"] = labels["output_tokens"]
        tokens["token_source"] += f"; output: the API's answers (the labels), {labels['token_source']}"
    return tokens


def _write_outputs(out: Path, inp, body: dict) -> tuple[Path, Path]:
    from offramp.cost.html import render as render_html
    from offramp.cost.model import capacity_from_point
    from offramp.cost.plot import cost_curves, plot_breakeven, volume_range
    from offramp.cost.report import hosting, lowest_load, sustainable_point
    from offramp.reports import write_report

    point = sustainable_point(inp.bench, inp.workload)
    low = lowest_load(inp.bench)
    cap = capacity_from_point(point, inp.output_weight, prefill_point=low) if point is not None else None
    crossing = (body.get("break_even") or {}).get("volume")
    volumes = volume_range(inp.workload.requests_per_month, crossing)
    kw = hosting(inp)
    per_hour = inp.host.per_hour(inp.pricing)
    curves = cost_curves(inp.workload, inp.api_price, cap, per_hour, volumes, inp.escalation_share, **kw)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OfframpError(f"{out}: cannot create the output directory ({e.strerror})") from None
    png, report = out / "breakeven.png", out / "breakeven_report.json"
    tmp = out / f".breakeven.png.tmp-{os.getpid()}"
    try:
        plot_breakeven(
            tmp,
            volumes,
            curves,
            api_label=f"{inp.api_name} ({body['api']['mode']})",
            host_label=f"{inp.host_name} ({inp.deployment}, one-offs amortised, operations)",
            crossing=crossing,
            workload_volume=inp.workload.requests_per_month,
        )
        page = out / f".breakeven.html.tmp-{os.getpid()}"
        page.write_text(render_html(body, tmp), encoding="utf-8")
        write_report(report, "breakeven", {**body, "plot": png.name})
        os.replace(tmp, png)
        os.replace(page, out / "breakeven.html")
    except OSError as e:
        raise OfframpError(f"{out}: cannot write the report ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
        (out / f".breakeven.html.tmp-{os.getpid()}").unlink(missing_ok=True)
    return report, png


def breakeven(
    bench: Annotated[Path, Opt(help="bench_report.json of the self-hosted model")],
    api: Annotated[str | None, Opt(help="API model from the price catalogue (default: the --traffic's)")] = None,
    traffic: Annotated[
        str | None, Opt(help="STORE[?tag=T&model=M&since=ISO&until=ISO]: the workload measured from captured calls")
    ] = None,
    host: Annotated[str | None, Opt(help="host from the price catalogue, e.g. aws-g6-xlarge")] = None,
    host_price_per_hour: Annotated[float | None, Opt(help="or: the host's price in USD/hour")] = None,
    pricing: Annotated[str, Opt(help="on_demand, spot or reserved_1y")] = "on_demand",
    prices: Annotated[list[Path] | None, Opt(help="your price YAML, merged over the catalogue")] = None,
    model: Annotated[str | None, Opt(help="the model priced; must match the bench report's")] = None,
    workload: Annotated[Path | None, Opt(help="workload YAML (flags below override it)")] = None,
    requests_per_month: Annotated[float | None, Opt()] = None,
    input_tokens: Annotated[float | None, Opt(help="mean input tokens per request")] = None,
    output_tokens: Annotated[float | None, Opt(help="mean output tokens per request")] = None,
    prompts: Annotated[Path | None, Opt(help="chat JSONL to measure the tokens per request from")] = None,
    api_prompts: Annotated[
        Path | None, Opt(help="chat JSONL of the prompts the API is sent: priced on those, shared prefix cached")
    ] = None,
    api_input_tokens: Annotated[float | None, Opt(help="or: mean input tokens of the API's prompt")] = None,
    reasoning_tokens: Annotated[float | None, Opt(help="hidden reasoning tokens per API request")] = None,
    cache_write_share: Annotated[float | None, Opt(help="share of API input billed as cache writes")] = None,
    allow_retired: Annotated[bool, Opt(help="price an API model its vendor has retired")] = False,
    cached_input_share: Annotated[float | None, Opt(help="share of input tokens hitting the prompt cache")] = None,
    peak_to_average: Annotated[float | None, Opt(help="peak / average request rate (default 2)")] = None,
    batch_tolerant: Annotated[bool | None, Opt(help="answers may wait for the batch API")] = None,
    slo_ttft_s: Annotated[float | None, Opt(help="p99 TTFT SLO (default: the bench's)")] = None,
    slo_tpot_ms: Annotated[float | None, Opt(help="p99 TPOT SLO (default: the bench's)")] = None,
    deployment: Annotated[str, Opt(help="always-on or scale-to-zero")] = "always-on",
    autoscale_utilisation: Annotated[float, Opt(help="busy share of paid hours when scaling")] = 0.7,
    target_utilisation: Annotated[float, Opt(help="share of the SLO load the peak may use")] = 0.7,
    n_plus_one: Annotated[bool, Opt(help="keep one spare replica beside those the peak needs")] = False,
    ops_hours_per_month: Annotated[float, Opt(help="operations hours per month")] = OPS_HOURS_PER_MONTH,
    ops_rate: Annotated[float, Opt(help="operations USD/hour")] = OPS_RATE_USD,
    output_weight: Annotated[float | None, Opt(help="split host cost: 1 output token = K input")] = None,
    escalation_share: Annotated[float | None, Opt(help="also price a cascade escalating this share")] = None,
    eval_report: Annotated[Path | None, Opt("--eval", help="eval_report.json: its gate decides quality")] = None,
    finetune: Annotated[Path | None, Opt(help="finetune_report.json: its run_cost_usd is a one-off")] = None,
    eval_spend: Annotated[float, Opt(help="one-off evaluation spend, USD")] = 0.0,
    eng_hours: Annotated[float, Opt(help="one-off engineering hours")] = 0.0,
    eng_rate: Annotated[float, Opt(help="engineering USD/hour")] = 0.0,
    amortise_months: Annotated[int, Opt(help="months the one-off costs are spread over")] = 12,
    out: Annotated[Path, Opt(help="output directory")] = Path("runs/breakeven"),
) -> None:
    """Self-hosted vs API cost per token and per month, break-even volume, go/no-go with the eval gate."""
    if (prompts or api_prompts) and importlib.util.find_spec("transformers") is None:
        from offramp.envs import require_env

        require_env("runtime")  # count tokens with the model's own tokenizer, not characters / 4
    from offramp.cost.report import analyse
    from offramp.cost.table import print_summary

    slo = {"p99_ttft_s": slo_ttft_s, "p99_tpot_ms": slo_tpot_ms} if slo_ttft_s or slo_tpot_ms else None
    fields = {
        "requests_per_month": requests_per_month, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cached_input_share": cached_input_share, "peak_to_average": peak_to_average,
        "batch_tolerant": batch_tolerant, "slo": slo, "api_input_tokens": api_input_tokens,
        "reasoning_tokens": reasoning_tokens, "cache_write_share": cache_write_share,
        "reasoning_source": "stated by the user (--reasoning-tokens)" if reasoning_tokens is not None else None,
        "api_token_source": "stated by the user (--api-input-tokens)" if api_input_tokens else None,
    }  # fmt: skip
    one_off = {
        "eval_usd": eval_spend, "engineering_hours": eng_hours, "engineering_rate_usd": eng_rate,
        "amortise_months": amortise_months,
    }  # fmt: skip
    traffic_inputs = _measure_traffic(traffic, fields, api, workload, prompts, api_prompts)
    if traffic_inputs is not None:
        fields = traffic_inputs["fields"]
    inp = _load_inputs(
        api, bench, host, host_price_per_hour, prices, pricing, model, fields, workload, prompts, api_prompts,
        eval_report, finetune, one_off, deployment=deployment, autoscale_utilisation=autoscale_utilisation,
        target_utilisation=target_utilisation, spare_replicas=int(n_plus_one), allow_retired=allow_retired,
        operations={"hours_per_month": ops_hours_per_month, "rate_usd": ops_rate},
        output_weight=output_weight, escalation_share=escalation_share, traffic=traffic_inputs,
    )  # fmt: skip
    body = analyse(inp)
    report, png = _write_outputs(out, inp, body)
    print_summary(inp, body)
    typer.echo(f"wrote {report}, {png} and {out / 'breakeven.html'}")


def register(app: typer.Typer) -> None:
    app.command("breakeven")(breakeven)
