"""Put prices, a bench report, a workload and the eval gate together: costs with provenance, and go/no-go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from offramp.artifacts import BenchReport, EvalReport, LoadPoint
from offramp.cost.breakeven import (
    break_even,
    cascade_cost,
    payback_months,
    price_cut_sensitivity,
    utilisation_sensitivity,
)
from offramp.cost.model import (
    HOURS_PER_MONTH,
    TARGET_UTILISATION,
    Capacity,
    Deployment,
    api_cost,
    bench_range_warnings,
    capacity_from_point,
    self_hosted_cost,
)
from offramp.cost.prices import ApiPrice, HostPrice
from offramp.cost.sections import api_section, price_record, self_hosted_section, summary
from offramp.cost.workload import Workload, adapter_base
from offramp.errors import OfframpError

OPS_HOURS_PER_MONTH = 4.0  # offramp's stated default: upgrades, monitoring, on-call share for one small service
OPS_RATE_USD = 100.0  # per engineering hour; change both with --ops-hours-per-month / --ops-rate


def assumptions(inp: Inputs) -> list[str]:
    ops = inp.operations
    return [
        "a month is 730 hours; the host is paid for every hour it is up (always-on, and any reserved price: "
        "reserved hours are paid busy or not) or for busy hours / autoscale utilisation (scale-to-zero on "
        "demand prices, cold starts not modelled); a host sold only whole (an 8-GPU instance) is paid whole",
        f"replicas are sized so the peak request rate (average × peak-to-average) uses at most "
        f"{inp.target_utilisation:.0%} of the highest measured load that met the latency SLO (headroom for "
        f"Poisson bursts){', plus one spare (N+1)' if inp.spare_replicas else ''}",
        f"operations: {ops.hours_per_month:g} engineering hours/month at ${ops.rate_usd:,.2f}/hour "
        "(offramp's default unless set: upgrades, monitoring, on-call) are paid every month on the self-hosted side",
        "the API is bought the cheapest way the workload allows: prompt-cache prices for the cached share of input "
        "(only for prompts at or above the vendor's cache minimum; cache writes billed where the vendor bills "
        "them), batch API when the workload tolerates it",
        "the API is priced on the prompt it is sent (api_input_tokens), the local model on its own prompt; both "
        "are counted with the local model's tokenizer (the vendor's counts somewhat differently)",
        "self-hosted capacity is measured with vLLM's prefix cache on, at the hit rate the bench's prompts reached; "
        "a workload sharing more or less prefix than the bench is not extrapolated",
        "not modelled: API cache storage fees, network egress, storage",
    ]


class Operations(BaseModel):
    """Monthly running cost of the self-hosted side beyond the host: people's time."""

    hours_per_month: float = Field(default=OPS_HOURS_PER_MONTH, ge=0)
    rate_usd: float = Field(default=OPS_RATE_USD, ge=0)

    @property
    def monthly(self) -> float:
        return self.hours_per_month * self.rate_usd


class OneOff(BaseModel):
    """Costs paid once, spread over `amortise_months` in the monthly self-hosted figure."""

    finetune_usd: float = Field(default=0.0, ge=0)
    finetune_source: str = "none given"
    eval_usd: float = Field(default=0.0, ge=0)
    engineering_hours: float = Field(default=0.0, ge=0)
    engineering_rate_usd: float = Field(default=0.0, ge=0)
    amortise_months: int = Field(default=12, ge=1)

    @property
    def total(self) -> float:
        return self.finetune_usd + self.eval_usd + self.engineering_hours * self.engineering_rate_usd

    @property
    def monthly(self) -> float:
        return self.total / self.amortise_months


@dataclass
class Inputs:
    api_name: str
    api_price: ApiPrice
    host_name: str
    host: HostPrice
    bench: BenchReport
    bench_path: Path
    workload: Workload
    pricing: str = "on_demand"
    deployment: Deployment = "always-on"
    autoscale_utilisation: float = 0.7
    target_utilisation: float = TARGET_UTILISATION
    spare_replicas: int = 0
    operations: Operations = field(default_factory=Operations)
    output_weight: float | None = None
    one_off: OneOff = field(default_factory=OneOff)
    eval: EvalReport | None = None
    escalation_share: float | None = None  # price a cascade too: this share of requests still goes to the API
    traffic: dict[str, Any] | None = None  # the captured traffic the workload was measured from (--traffic)


def hosting(inp: Inputs) -> dict[str, Any]:
    """The keyword arguments every self-hosted cost function takes, from one place."""
    return {
        "deployment": inp.deployment,
        "autoscale_utilisation": inp.autoscale_utilisation,
        "target_utilisation": inp.target_utilisation,
        "spare_replicas": inp.spare_replicas,
        "billing_unit": inp.host.sold_in_multiples_of,
        "committed": inp.pricing not in ("on_demand", "spot"),  # a reserved price is paid for every hour
        "one_off_monthly": inp.one_off.monthly,
        "operations_monthly": inp.operations.monthly,
    }


def warnings(inp: Inputs, point: LoadPoint | None) -> list[str]:
    """What the figures cannot vouch for, said where the reader sees the verdict."""
    found = bench_range_warnings(inp.workload, inp.bench.points) if point is not None else []
    if inp.api_price.reasoning and inp.workload.reasoning_tokens == 0:
        found.append(
            f"{inp.api_name} bills hidden reasoning tokens as output, and none were counted "
            f"({inp.workload.reasoning_source}): the API's cost is understated; pass --reasoning-tokens"
        )
    if inp.traffic is not None:
        found += inp.traffic["warnings"]
    if inp.workload.api_input_tokens is None:
        found.append(
            "the API is priced on the local model's prompt; an API call usually carries more (label list, "
            "examples): pass --api-prompts or --api-input-tokens"
        )
    return found


def served_model(bench: BenchReport) -> str:
    """The benched model in words: a served alias of a LoRA adapter names the base it adapts."""
    root = getattr(bench, "model_root", None)
    base = adapter_base(root) if root else None
    return f"{bench.model} (LoRA on {Path(base).name})" if base else bench.model


def same_model(a: str, b: str) -> bool:
    """Store name, checkpoint path and hub id of one model compare equal by their last path component."""

    def tail(s: str) -> str:
        return Path(s.strip().rstrip("/")).name.lower()

    return a.strip() == b.strip() or tail(a) == tail(b)


def sustainable_point(bench: BenchReport, w: Workload) -> LoadPoint | None:
    """The bench's own SLO-meeting point, or the highest-throughput point meeting the workload's stricter SLO."""
    if w.slo is None or (w.slo.p99_ttft_s is None and w.slo.p99_tpot_ms is None):
        return bench.sustainable

    def meets(p: LoadPoint) -> bool:
        ttft, tpot = p.ttft_ms.get("p99"), p.tpot_ms.get("p99")
        if ttft is None or tpot is None:
            raise OfframpError("bench report points lack p99 TTFT / TPOT, so the workload SLO cannot be checked")
        ok_ttft = w.slo.p99_ttft_s is None or ttft <= w.slo.p99_ttft_s * 1000
        ok_tpot = w.slo.p99_tpot_ms is None or tpot <= w.slo.p99_tpot_ms
        return p.failed == 0 and ok_ttft and ok_tpot

    ok = [p for p in bench.points if meets(p)]
    return max(ok, key=lambda p: p.requests_per_s) if ok else None


def _decision(inp: Inputs, api_monthly: float, host_monthly: float | None, warned: list[str]) -> dict[str, Any]:
    blockers, notes = [], []
    gate = inp.eval.gate if inp.eval else None
    if gate is not None and gate.get("expression") is None:  # evaluated, but judged by no gate
        gate = None
    if gate is not None and str(gate.get("verdict", "")).upper() != "GO":
        blockers.append(f"quality gate fails: {gate.get('reason') or gate.get('expression') or gate.get('verdict')}")
    if inp.workload.requests_per_month == 0:
        blockers.append("zero volume: there is nothing to serve, so nothing to save")
    if host_monthly is None:
        blockers.append("no load level of the bench met the latency SLO: the host cannot serve this workload")
    else:
        ours = (
            f"self-hosted {served_model(inp.bench)} on {inp.host_name} ${host_monthly:,.2f}/month (incl. "
            f"${inp.operations.monthly:,.2f} operations)"
        )
        theirs = f"{inp.api_name} ${api_monthly:,.2f}/month"
        if host_monthly >= api_monthly and inp.workload.requests_per_month > 0:
            blockers.append(f"{ours} is not cheaper than {theirs}")
        elif host_monthly < api_monthly:
            notes.append(f"{ours} vs {theirs}")
    if gate is None:
        notes.append(f"{'no quality gate' if inp.eval else 'no eval report'}: quality was not checked")
    elif not blockers:
        notes.append(f"quality gate passes: {gate.get('reason') or gate.get('expression', '')}")
    verdict = "NO-GO" if blockers else ("NEEDS-EVAL" if gate is None else "GO")
    return {"verdict": verdict, "reasons": blockers + notes + [f"caution: {x}" for x in warned], "quality_gate": gate}


def analyse(inp: Inputs) -> dict[str, Any]:
    """The body of breakeven_report.json (write_report adds version, time and this machine's hardware)."""
    w, bench = inp.workload, inp.bench
    api = api_cost(w, inp.api_price)
    per_hour = inp.host.per_hour(inp.pricing)
    point = sustainable_point(bench, w)
    one_off, kw = inp.one_off, hosting(inp)
    body: dict[str, Any] = {
        "model": bench.model,
        "api": api_section(inp, api),
        "host": {
            "name": inp.host_name,
            "kind": inp.host.kind,
            "accelerator": inp.host.accelerator,
            "pricing": inp.pricing,
            "price_per_hour": price_record(per_hour, "USD/hour", inp.host),
            "sold_in_multiples_of": inp.host.sold_in_multiples_of,
        },
        "workload": {**w.model_dump(), "hours_per_month": HOURS_PER_MONTH},
        **({"traffic": inp.traffic} if inp.traffic is not None else {}),
        "assumptions": assumptions(inp),
        "warnings": warnings(inp, point),
        "bench": {"path": str(inp.bench_path), "model": bench.model, "hardware": bench.hardware, "slo": bench.slo},
        "one_off": {**one_off.model_dump(), "total_usd": one_off.total, "monthly_usd": one_off.monthly},
        "operations": {**inp.operations.model_dump(), "monthly_usd": inp.operations.monthly},
    }
    if point is None:
        body["self_hosted"] = None
        body["break_even"] = {"volume": None, "reason": "no load level of the bench met the latency SLO"}
        body["decision"] = _decision(inp, api.monthly_usd, None, body["warnings"])
        body["summary"] = summary(inp, body)
        return body
    cap = capacity_from_point(point, inp.output_weight, prefill_point=lowest_load(bench))
    host = self_hosted_cost(w, cap, per_hour, **kw)
    be = break_even(w, api, cap, per_hour, **kw)
    body["self_hosted"] = self_hosted_section(inp, point, cap, host)
    body["break_even"] = {
        **be.to_dict(),
        "payback_months": payback_months(
            one_off.total, api.monthly_usd, host.host_monthly_usd + host.operations_monthly_usd
        ),
        "note": "volume in requests/month, counting the amortised one-off costs and the monthly operations cost "
        "in the self-hosted cost",
    }
    body["sensitivity"] = {
        "utilisation": utilisation_sensitivity(w, api, cap, per_hour),
        "api_price_cuts": price_cut_sensitivity(w, inp.api_price, cap, per_hour, one_off.total, **kw),
    }
    if inp.escalation_share is not None:
        body["cascade"] = _cascade_section(inp, cap, per_hour, kw)
    body["decision"] = _decision(inp, api.monthly_usd, host.monthly_usd, body["warnings"])
    body["summary"] = summary(inp, body)
    return body


def lowest_load(bench: BenchReport) -> LoadPoint | None:
    """The sweep's lightest completed load level (least queueing): where the prefill rate is read."""
    done = [p for p in bench.points if p.completed > 0 and p.failed == 0]
    return min(done, key=lambda p: p.requests_per_s) if done else None


def _cascade_section(inp: Inputs, cap: Capacity, per_hour: float, kw: dict[str, Any]) -> dict[str, Any]:
    """The local model answers every request first; the escalated share is also bought from the API."""
    e, w = inp.escalation_share, inp.workload
    cost = cascade_cost(w, inp.api_price, cap, per_hour, e, **kw)
    be = break_even(w, api_cost(w, inp.api_price), cap, per_hour, escalation_share=e, **kw)
    return {
        "escalation_share": e,
        "rule": "the local model sees every request; the escalated share is also paid at the API's price",
        "monthly_usd": cost.monthly_usd,
        "local_monthly_usd": cost.local.monthly_usd,
        "escalated_api_monthly_usd": cost.escalated.monthly_usd,
        "per_1k_requests_usd": cost.per_1k_requests_usd,
        "break_even_vs_api": be.to_dict(),
    }
