"""The rich summary `offramp breakeven` prints: each number beside where it comes from."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _usd(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"${v:,.{digits}f}"


def _hardware(hw: dict) -> str:
    if hw.get("gpus"):
        return f"{len(hw['gpus'])}x {hw['gpus'][0]}"
    return f"{hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores"


def _v(section: dict, key: str) -> Any:
    return section["cost"][key]["value"]


def _listed(entry) -> str:
    return f"list price {entry.date}" + ("" if entry.verified else " (unverified)")


def _self_hosted_rows(table: Table, inp, body: dict) -> None:
    sh, be, w = body["self_hosted"], body["break_even"], inp.workload
    c = sh["cost"]
    table.add_row("replica throughput at SLO", f"{_v(sh, 'capacity_rps'):.3g} req/s", "measured [2]")
    target = f"{c['target_utilisation']['value']:.0%} of SLO load"
    spare = c["spare_replicas"]["value"]
    shown = f"{c['replicas']['value']}" + (f" (incl. {spare} spare)" if spare else "")
    table.add_row("replicas for the peak", shown, f"peak/average {w.peak_to_average:g}, {target}")
    util = c["utilisation"]["value"]
    table.add_row("busy share of paid hours", "—" if util is None else f"{util:.1%}", sh["deployment"])
    table.add_row("self-hosted host / month", _usd(_v(sh, "host_monthly_usd")), "[3] × paid hours")
    months = inp.one_off.amortise_months
    table.add_row("+ one-off / month", _usd(_v(sh, "one_off_monthly_usd")), f"{_usd(inp.one_off.total)} / {months} mo")
    ops = inp.operations
    table.add_row("+ operations / month", _usd(ops.monthly), f"{ops.hours_per_month:g} h × {_usd(ops.rate_usd)}")
    per = f"{_usd(_v(sh, 'per_1m_input_usd'), 4)}, {_usd(_v(sh, 'per_1m_output_usd'), 4)}"
    table.add_row("self-hosted $/1M in, out", per, "at that busy share")
    floor = f"{_usd(_v(sh, 'floor_per_1m_input_usd'), 4)}, {_usd(_v(sh, 'floor_per_1m_output_usd'), 4)}"
    table.add_row("floor $/1M in, out", floor, "every paid hour busy")
    needed = be["utilisation_needed"]
    shown = "—" if needed is None else f"{needed:.1%}" + (" (impossible)" if needed > 1 else "")
    table.add_row("busy share to match API", shown, "per token")
    table.add_row("break-even", "never" if be["volume"] is None else f"{be['volume']:,.0f} req/month", "computed")
    if be["volume"] is not None and be["stays_cheaper_from"] > be["volume"]:
        table.add_row("stays cheaper from", f"{be['stays_cheaper_from']:,.0f} req/month", "after replica steps")
    payback = be.get("payback_months")
    shown = "no one-offs" if inp.one_off.total == 0 else "never" if payback is None else f"{payback:.1f} months"
    table.add_row("payback of one-offs", shown, "at this volume")
    if cascade := body.get("cascade"):
        label = f"cascade, {cascade['escalation_share']:.0%} to API"
        table.add_row(f"{label} / month", _usd(cascade["monthly_usd"]), "local host + escalated at [1]")
        volume = cascade["break_even_vs_api"]["volume"]
        table.add_row("cascade break-even", "never" if volume is None else f"{volume:,.0f} req/month", "vs all-API")


def _source(w, key: str) -> str:
    return "measured (traffic)" if key in w.provenance else "workload"


def print_summary(inp, body: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    api, sh, decision, w = body["api"], body["self_hosted"], body["decision"], inp.workload
    table = Table(title=escape(f"{inp.api_name} vs {body['model']} on {inp.host_name}"))
    for name, justify in (("", "left"), ("value", "right"), ("source", "left")):
        table.add_column(name, justify=justify)
    table.add_row("requests / month", f"{w.requests_per_month:,.0f}", _source(w, "requests_per_month"))
    table.add_row("peak / average", f"{w.peak_to_average:g}", _source(w, "peak_to_average"))
    table.add_row("tokens / request in, out", f"{w.input_tokens:,.1f}, {w.output_tokens:,.1f}", "workload [4]")
    table.add_row("API prompt tokens", f"{api['prompt']['input_tokens']:,.0f}", "[5]")
    table.add_row(f"API ({api['mode']}) / month", _usd(_v(api, "monthly_usd")), _listed(inp.api_price) + " [1]")
    table.add_row("API $ / request", _usd(_v(api, "per_request_usd"), 6), "[1] × tokens")
    if (traffic := body.get("traffic")) and traffic["paid"]["per_request_usd"] is not None:
        paid = traffic["paid"]
        table.add_row(
            "traffic paid $ / request", _usd(paid["per_request_usd"], 6), f"{paid['priced_calls']:,} calls [T]"
        )
    table.add_row("API $/1M tokens, blended", _usd(_v(api, "per_1m_tokens_usd"), 4), "[1] × token mix")
    table.add_row("host $/hour", _usd(body["host"]["price_per_hour"]["value"], 4), _listed(inp.host) + " [3]")
    if sh is None:
        table.add_row("self-hosted", "cannot serve", "no bench load met the SLO [2]")
    else:
        _self_hosted_rows(table, inp, body)
    console.print(table)
    notes = [
        f"[1] {inp.api_price.source}",
        f"[2] {inp.bench_path}, measured on {_hardware(inp.bench.hardware)}",
        f"[3] {inp.host.source}",
        f"[4] {w.token_source}",
        *([f"[T] {body['traffic']['spec']}: {body['traffic']['paid']['source']}"] if body.get("traffic") else []),
        *(f"{k}: {v}" for k, v in w.provenance.items() if k in ("requests_per_month", "peak_to_average")),
        f"[5] {api['prompt']['source']}; cache: {api['prompt']['cache']}",
        *([f"host cost split: {sh['split_rule']}"] if sh is not None else []),
        f"break-even: {body['break_even']['reason']}",
        *(f"caution: {x}" for x in body.get("warnings", [])),
    ]
    for line in notes:
        console.print(line, markup=False)
    colour = {"GO": "green", "NO-GO": "red"}.get(decision["verdict"], "yellow")
    console.print(f"[bold {colour}]{decision['verdict']}[/]: " + escape("; ".join(decision["reasons"])))
