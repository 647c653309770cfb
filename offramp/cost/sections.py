"""The sections of breakeven_report.json: every number with its provenance (list price, measured, computed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from offramp.artifacts import LoadPoint
from offramp.cost.model import ApiCost, Capacity, SelfHostedCost
from offramp.cost.prices import ApiPrice, HostPrice
from offramp.cost.workload import Workload
from offramp.reports import list_price, measured

if TYPE_CHECKING:
    from offramp.cost.report import Inputs


def computed(value: Any, unit: str, how: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "source": "computed", "from": how}


def _unit(key: str) -> str:
    if "per_1m" in key:
        return "USD/1M tokens"
    if key.startswith("monthly") or key.endswith("monthly_usd"):
        return "USD/month"
    if key.endswith("_rps"):
        return "requests/s"
    units = {"per_request_usd": "USD/request", "price_per_hour": "USD/hour"}
    if key.endswith("replicas"):
        return "hosts"
    if key.endswith("_tokens"):
        return "tokens/request"
    return units.get(key) or ("hours/month" if key.endswith("_hours") else "share")


def price_record(value: float, unit: str, entry: ApiPrice | HostPrice) -> dict[str, Any]:
    return {**list_price(value, unit, entry.date, entry.source), "verified": entry.verified}


def _workload_figure(w: Workload, key: str, unit: str) -> dict[str, Any]:
    """A workload figure: measured from captured traffic (its provenance says from which calls) or stated."""
    if key in w.provenance:
        return {"value": getattr(w, key), "unit": unit, "source": "traffic", "from": w.provenance[key]}
    return {"value": getattr(w, key), "unit": unit, "source": "user"}


def summary(inp: Inputs, body: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, flat, each with its provenance (the pipeline report shows this table)."""
    api, be, w = body["api"]["cost"], body["break_even"], inp.workload
    listed = {"date": inp.api_price.date, "reference": inp.api_price.source, "verified": inp.api_price.verified}
    head = {
        "verdict": body["decision"]["verdict"],
        "requests_per_month": _workload_figure(w, "requests_per_month", "requests/month"),
        "peak_to_average": _workload_figure(w, "peak_to_average", "peak / average request rate"),
        "api_input_tokens": computed(api["input_tokens"]["value"], "tokens/request", body["api"]["prompt"]["source"]),
        "api_monthly_usd": {**api["monthly_usd"], **listed},
        "api_per_1m_tokens_usd": {**api["per_1m_tokens_usd"], **listed},
    }
    if (traffic := body.get("traffic")) and traffic["paid"]["per_request_usd"] is not None:
        head["traffic_paid_per_request_usd"] = {
            "value": traffic["paid"]["per_request_usd"],
            "unit": "USD/request",
            "source": "traffic",
            "from": f"{traffic['paid']['priced_calls']:,} priced calls of {traffic['spec']}: "
            + traffic["paid"]["source"],
        }
    if body["self_hosted"] is None:
        return {**head, "self_hosted": "no load level of the bench met the latency SLO"}
    sh = body["self_hosted"]["cost"]
    hosted = {
        "date": inp.host.date,
        "reference": inp.host.source,
        "verified": inp.host.verified,
        "hardware": inp.bench.hardware,
    }
    how = "prices × measured throughput × workload"
    return {
        **head,
        **{f"self_hosted_{k}": {**sh[k], **hosted} for k in ("monthly_usd", "per_1m_input_usd", "per_1m_output_usd")},
        **{k: {**sh[k], **hosted} for k in ("floor_per_1m_input_usd", "floor_per_1m_output_usd", "replicas")},
        "utilisation": {**sh["utilisation"], **hosted},
        "target_utilisation": {
            "value": sh["target_utilisation"]["value"],
            "unit": "share",
            "source": "user",
            "from": "peak uses at most this share of the SLO-meeting load",
        },
        "operations_monthly_usd": {
            "value": sh["operations_monthly_usd"]["value"],
            "unit": "USD/month",
            "source": "user",
            "from": "hours/month × rate (offramp default unless set)",
        },
        "break_even_requests_per_month": computed(be["volume"], "requests/month", how),
        "payback_months": computed(be["payback_months"], "months", "one-off costs / monthly saving at this volume"),
    }


def api_section(inp: Inputs, api: ApiCost) -> dict[str, Any]:
    p = inp.api_price
    w = inp.workload
    prompt = f"the API's prompt ({w.api_token_source.split(';')[0]})" if w.api_token_source else "the local prompt"
    how = f"{inp.api_name} {api.mode} list prices × {prompt} and the answers' tokens ({w.token_source})"
    return {
        "name": inp.api_name,
        "mode": api.mode,
        "list_prices": {
            "input_per_1m": price_record(p.input_per_1m, "USD/1M tokens", p),
            "cached_input_per_1m": None
            if p.cached_input_per_1m is None
            else price_record(p.cached_input_per_1m, "USD/1M tokens", p),
            "output_per_1m": price_record(p.output_per_1m, "USD/1M tokens", p),
            "cache_write_per_1m": None
            if p.cache_write_per_1m is None
            else price_record(p.cache_write_per_1m, "USD/1M tokens", p),
            "batch_discount": price_record(p.batch_discount, "share", p),
        },
        "prompt": {
            "input_tokens": api.input_tokens,
            "source": inp.workload.api_token_source or f"the local model's prompt ({inp.workload.token_source})",
            "reasoning_tokens": inp.workload.reasoning_tokens,
            "reasoning_source": inp.workload.reasoning_source,
            "cache": api.cache_note,
            "cache_min_prompt_tokens": p.cache_min_prompt_tokens,
        },
        "cost": {
            k: computed(v, _unit(k), how)
            for k, v in api.to_dict().items()
            if k not in ("mode", "cache_note") and v is not None
        },
    }


def self_hosted_section(inp: Inputs, point: LoadPoint, cap: Capacity, host: SelfHostedCost) -> dict[str, Any]:
    hw = inp.bench.hardware
    how = f"{inp.host_name} price × host time measured in {inp.bench_path} ({inp.deployment})"
    return {
        "load_point": {
            "concurrency": point.concurrency,
            "request_rate": point.request_rate,
            "input_tokens_per_s": measured(point.input_tokens_per_s, "tokens/s", hardware=hw),
            "output_tokens_per_s": measured(point.output_tokens_per_s, "tokens/s", hardware=hw),
            "requests_per_s": measured(point.requests_per_s, "requests/s", hardware=hw),
        },
        "split_rule": cap.rule,
        "capacity": cap.to_dict(),
        "cost": {k: computed(v, _unit(k), how) for k, v in host.to_dict().items() if k != "deployment"},
        "deployment": inp.deployment,
        "prefix_cache": {
            "hit_rate": inp.bench.prefix_cache_hit_rate,
            "credit": "already in the measured throughput (vLLM's prefix cache was on in the bench); not "
            "extrapolated to the workload's own shared-prefix share",
        },
    }
