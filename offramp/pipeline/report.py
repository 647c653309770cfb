"""The decision report: one self-contained HTML page (plots embedded) plus report.json.

Every number shown carries its provenance: measured here (on which hardware), list price (of which date),
or cited (which paper).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from offramp.artifacts import load_report
from offramp.errors import OfframpError
from offramp.hardware import hardware_summary
from offramp.paths import atomic_write_text, read_json
from offramp.pipeline.runner import StageResult
from offramp.reports import now_iso


def _maybe(path: Path, kind: str | None, problems: list[str]) -> Any:
    """A stage's report, or None where the stage wrote none. One that is there but broken or invalid is a problem
    (file and field named), never silently nothing."""
    if not path.is_file():
        return None
    try:
        return load_report(path, kind).model_dump() if kind else read_json(path)
    except ValueError as e:
        problems.append(f"{path}: not valid JSON ({e})")
    except OfframpError as e:
        problems.append(str(e))
    return None


def collect(cfg: dict, results: list[StageResult], baseline_gap: str | None = None) -> dict:
    """The run's report. `baseline_gap` says why quality could not be compared (no usable baseline), if so."""
    dirs = {r.name: r.workdir for r in results if r.status in ("done", "cached")}
    problems: list[str] = []

    def report(stage: str, file: str, kind: str | None = None) -> Any:
        return _maybe(dirs[stage] / file, kind, problems) if stage in dirs else None

    ev = report("eval", "eval_report.json", "eval")
    bench = report("bench", "bench_report.json", "bench")
    be = report("breakeven", "breakeven_report.json", "breakeven")
    ft = report("finetune", "ft/finetune_report.json", "finetune")
    cascade = report("cascade", "cascade/cascade_report.json", "cascade")
    cascade_cost = report("cascade", "breakeven/breakeven_report.json", "breakeven")
    quantized = quantized_candidates(dirs, ev, problems)
    failed = [r for r in results if r.status in ("failed", "skipped")]
    data = report("data", "data/data_report.json", "data")
    lm = {"name": "tuned" if "finetune" in dirs else "base", "head": "lm", "eval": ev, "bench": bench, "breakeven": be}
    cls_outcome = report("classifier", "classifier.json")
    classifier = {
        "name": "classifier",
        "head": "classify",
        "outcome": cls_outcome,
        "finetune": report("classifier", "ft/finetune_report.json", "finetune"),
        "eval": report("eval", "classifier/eval_report.json", "eval"),
        "bench": report("bench", "classifier/bench_report.json", "bench"),
        "breakeven": report("breakeven", "classifier/breakeven_report.json", "breakeven"),
    }
    pool = [lm, classifier] if (cls_outcome or {}).get("status") == "done" else [lm]
    rows = [candidate_row(c) for c in pool]
    chosen = pool[best_candidate(rows)]
    decided = verdict(chosen["eval"], chosen["breakeven"], failed, problems, baseline_gap)
    if len(pool) > 1 and decided["verdict"] != "INCOMPLETE":
        decided["reason"] = f"{candidate_sentence(rows, chosen['name'])}. {decided['reason']}"
    decided["candidate"] = chosen["name"]
    if data and data.get("traffic") and decided["verdict"] != "INCOMPLETE":
        decided["reason"] += f". {traffic_sentence(data)}"
    return {
        "created_at": now_iso(),
        "hardware": hardware_summary(),
        "config": cfg,
        "verdict": decided,
        "problems": problems,
        "data": data,
        "stages": [
            {
                "name": r.name,
                "status": r.status,
                "seconds": round(r.seconds, 1),
                "error": r.error,
                "workdir": str(r.workdir) if r.workdir else None,
            }
            for r in results
        ],
        "eval": ev,
        "bench": bench,
        "breakeven": be,
        "finetune": ft,
        "cascade": cascade,
        "cascade_cost": (cascade_cost or {}).get("cascade"),
        "cascade_plot": str(dirs["cascade"] / "cascade" / "cascade.png") if cascade else None,
        "breakeven_plot": str(dirs["breakeven"] / "breakeven.png") if "breakeven" in dirs else None,
        "quantized": quantized,
        "candidates": rows,
        "classifier": classifier if cls_outcome else None,
    }


def _system(ev: dict | None, name: str) -> dict | None:
    return next((s for s in (ev or {}).get("systems", []) if s["name"] == name), None)


def candidate_row(c: dict) -> dict:
    """One candidate's figures side by side: accuracy (95 % CI) and its gate, the bench's sustainable load, and the
    break-even's cost per request and per month, each from its own stage report."""
    ev, bench, be = c["eval"], c["bench"], c["breakeven"]
    system = _system(ev, c["name"])
    point = (bench or {}).get("sustainable") or {}
    cost = ((be or {}).get("self_hosted") or {}).get("cost") or {}
    value = lambda k: (cost.get(k) or {}).get("value")  # noqa: E731
    per_request = value("per_request_usd")
    floor = ((bench or {}).get("cost") or {}).get("fully_utilised_floor") or {}
    return {
        "name": c["name"],
        "head": c["head"],
        "accuracy": system["accuracy"] if system else None,
        "mode": system.get("mode") if system else None,
        "gate": (ev or {}).get("gate", {}).get("verdict"),
        "requests_per_s": point.get("requests_per_s"),
        "concurrency": point.get("concurrency"),
        "usd_per_1m_requests": None if per_request is None else per_request * 1e6,  # at the configured volume
        "usd_per_1m_requests_fully_utilised": floor.get("per_million_requests"),  # the host busy all the time
        "self_hosted_monthly_usd": value("monthly_usd"),
        "break_even_requests_per_month": ((be or {}).get("break_even") or {}).get("volume"),
        "decision": ((be or {}).get("decision") or {}).get("verdict"),
        "source": "measured here (eval, bench and break-even reports of this run)",
    }


def best_candidate(rows: list[dict]) -> int:
    """The candidate the verdict speaks for: of those passing the quality gate, a GO first, then the cheapest
    per month (then per request); with none passing, the most accurate. The LM head on a tie."""

    def monthly(r: dict) -> float:
        return math.inf if r["self_hosted_monthly_usd"] is None else r["self_hosted_monthly_usd"]

    def per_request(r: dict) -> float:
        return math.inf if r["usd_per_1m_requests"] is None else r["usd_per_1m_requests"]

    passing = [i for i, r in enumerate(rows) if r["gate"] == "GO"]
    if passing:
        return min(passing, key=lambda i: (rows[i]["decision"] != "GO", monthly(rows[i]), per_request(rows[i]), i))
    measured = [i for i, r in enumerate(rows) if r["accuracy"] is not None]
    return max(measured, key=lambda i: (rows[i]["accuracy"]["value"], -i)) if measured else 0


HEADS = {"lm": "LM head", "classify": "classifier head"}  # a candidate's `head`, in words


def candidate_sentence(rows: list[dict], chosen: str) -> str:
    """Which candidate the verdict is about, and why, beside the other: the verdict's reason starts with it."""
    parts = []
    for r in rows:
        acc = "not evaluated" if r["accuracy"] is None else f"{_accuracy(r['accuracy'], False)}"
        rps = "–" if r["requests_per_s"] is None else f"{r['requests_per_s']:.1f} requests/s"
        floor = r.get("usd_per_1m_requests_fully_utilised")
        usd = "–" if floor is None else f"${floor:,.2f} per 1M requests fully utilised"
        parts.append(f"{r['name']} ({HEADS[r['head']]}): {acc}, gate {r['gate'] or '–'}, {rps}, {usd}")
    why = "passes the gate and costs least" if any(r["gate"] == "GO" for r in rows) else "is the most accurate"
    return f"Candidate {chosen} {why} ({'; '.join(parts)})"


def traffic_sentence(data: dict) -> str:
    """Where captured-traffic data came from, and who its baseline is: the verdict's reason ends with it."""
    t = data["traffic"]
    teacher = ", ".join(data.get("teacher") or []) or "the API (model not recorded)"
    return (
        f"Data: captured traffic ({data['source']}), {t['counts']['calls']:,} calls from {_when(t['window']['first'])} "
        f"to {_when(t['window']['last'])}; test split = the latest calls ({_when(t['test_range']['first'])} to "
        f"{_when(t['test_range']['last'])}). Baseline: the teacher {teacher}, whose answers are the labels (agreement "
        "100 % by definition): accuracy here is the small model's agreement with it"
    )


def _data_section(data: dict) -> str:
    t = data["traffic"]
    c = t["counts"]
    spend = t["spend"]
    rows = [
        ["source", data["source"]],
        ["teacher (the API that answered)", ", ".join(data.get("teacher") or []) or "not recorded"],
        ["window", f"{_when(t['window']['first'])} to {_when(t['window']['last'])}"],
        ["train", f"{data['train']:,} calls, {_when(t['train_range']['first'])} to {_when(t['train_range']['last'])}"],
        ["test (latest, frozen)", f"{data['test']:,} calls, {_when(t['test_range']['first'])} to "
         f"{_when(t['test_range']['last'])}"],
        ["calls / duplicates removed / labels", f"{c['calls']:,} / {c['duplicates_removed']:,} / {data['labels']}"],
        ["measured $ per request", "n/a" if spend["usd_per_request"] is None else f"${spend['usd_per_request']:.6f}"
         f" ({spend['priced_calls']:,} priced calls)"],
    ]  # fmt: skip
    note = f"<p class='small'>{html.escape(data.get('terms_note', ''))}</p>"
    return "<h2>Data: captured traffic</h2>" + _table(["figure", "value"], rows) + note


def quantized_candidates(dirs: dict[str, Path], ev: dict | None, problems: list[str]) -> list[dict]:
    """Each quantize method: its size / perplexity change (quantize_report.json) beside its task accuracy."""
    from offramp.pipeline.stages import QUANTIZED, quantized_systems

    if "quantize" not in dirs:
        return []
    evaluated = dirs.get("eval")
    if evaluated is not None and (evaluated / QUANTIZED).is_file():
        systems = read_json(evaluated / QUANTIZED)
    else:
        ft = "tuned" if "finetune" in dirs else "base"
        systems = quantized_systems(dirs["quantize"], ft)
    by_name = {}
    for s in (ev or {}).get("systems", []):
        by_name.setdefault(s["name"], []).append(s)
    rows = []
    for q in systems:
        rep = (
            _maybe(Path(q["checkpoint"]) / "quantize_report.json", "quantize", problems)
            if q.get("checkpoint")
            else None
        )
        keep = ("size_ratio", "linear_compression", "perplexity_change_pct", "quantize_time_s", "hardware")
        rows.append(
            {
                **{k: q.get(k) for k in ("method", "system", "status", "evaluated", "note")},
                "quantize": {k: rep.get(k) for k in keep} if rep else None,
                "accuracy": {s.get("mode") or "": s["accuracy"] for s in by_name.get(q["system"], [])},
            }
        )
    return rows


def baseline_sources(ev: dict | None, be: dict | None) -> str:
    """Whose quality and whose price the verdict compares, each with its source, and whether they are one model."""
    if not ev or not ev.get("gate", {}).get("baseline"):
        return ""
    base = next((s for s in ev["systems"] if s["name"] == ev["gate"]["baseline"]), None)
    if base is None:
        return ""
    if base["source"] == "cited":
        quality = (
            f"baseline quality: {base.get('model') or base['name']} {base['accuracy']['value']:.1f} % is cited "
            f"({base.get('reference')}), not measured here"
        )
    else:
        quality = f"baseline quality: {base['name']} ({base['spec']}) measured here on {ev['n_queries']} queries"
    if not be or not be.get("api"):
        return quality
    api = be["api"]
    prompt = api.get("prompt") or {}
    per_request = api["cost"]["per_request_usd"]["value"]
    listed = api["list_prices"]["input_per_1m"]
    price = (
        f"API price: {api['name']} list price {listed.get('date')} on a {prompt.get('input_tokens', 0):,.0f}-token "
        f"prompt (${per_request * 1000:,.2f} per 1,000 requests)"
    )
    same = base["source"] != "cited" and base["spec"].rsplit(":", 1)[-1] == api["name"]
    parts = [quality, price]
    if not same:
        parts.append(
            "quality and price are of different models: the price is what the team would pay for the configured "
            "API, the quality a published score of another (set the API's key to measure it)"
        )
    if cost := base.get("cited_cost"):
        parts.append(
            f"cited cost: {base.get('model')} ${cost['usd']:,.0f} for {cost['queries']:,} queries = "
            f"${cost['usd'] / cost['queries'] * 1000:,.2f} per 1,000 ({cost['reference']}, prices of its date)"
        )
    return "; ".join(parts)


def verdict(
    ev: dict | None, be: dict | None, failed: list[StageResult], problems: list[str], baseline_gap: str | None = None
) -> dict:
    """GO / NO-GO from the break-even decision (or the gate alone); NEEDS-BASELINE where quality had nothing to be
    compared with and cost alone does not already say no; INCOMPLETE where reports are missing or broken."""
    if problems:
        return {"verdict": "INCOMPLETE", "reason": f"unreadable stage reports: {'; '.join(problems)}"}
    gap = baseline_gap if ev else None
    if be and isinstance(be.get("decision"), dict):
        d = be["decision"]
        reason = "; ".join(d.get("reasons") or []) or d.get("reason", "")
        if gap and d.get("verdict") != "NO-GO":
            return {"verdict": "NEEDS-BASELINE", "reason": f"quality not judged: {gap}. Cost alone: {reason}"}
        sources = baseline_sources(ev, be) or (f"quality not judged: {gap}" if gap else "")
        return {"verdict": d.get("verdict", "?"), "reason": reason + (f". {sources}" if sources else "")}
    if gap:
        return {"verdict": "NEEDS-BASELINE", "reason": f"quality not judged: {gap}"}
    if ev:
        gate = ev["gate"]
        return {"verdict": gate.get("verdict", "?"), "reason": f"quality gate only: {gate.get('reason', '')}"}
    names = ", ".join(r.name for r in failed) or "none"
    return {"verdict": "INCOMPLETE", "reason": f"stages that did not finish: {names}"}


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def quality_plot(ev: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = ev["systems"]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(systems)))
    for i, s in enumerate(systems):
        acc = s["accuracy"]
        color = "#888" if s["source"] == "cited" else "#1f6feb"
        ax.barh(i, acc["value"], color=color)  # percent points
        if s["source"] == "cited" or acc.get("ci_low") is None or acc.get("ci_high") is None:
            continue  # a cited score has no interval: an error bar of width zero would look measured
        ax.errorbar(
            acc["value"],
            i,
            xerr=[[acc["value"] - acc["ci_low"]], [acc["ci_high"] - acc["value"]]],
            color="k",
            capsize=3,
        )
    ax.set_yticks(range(len(systems)), [f"{s['name']} ({s.get('mode') or s['source']})" for s in systems])
    ax.set_xlabel("accuracy %, 95 % bootstrap CI (grey: cited, not measured)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_plain(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    """Metrics arrive in percent points (0-100)."""
    return "–" if x is None else f"{x:.1f} %"


def _accuracy(a: dict, cited: bool) -> str:
    """A score with its 95 % interval; a cited score has none (a zero-width interval would look measured)."""
    if cited:
        return f"{_pct(a['value'])} (cited, no interval)"
    if a.get("ci_low") is None or a.get("ci_high") is None:
        return _pct(a["value"])
    return f"{_pct(a['value'])} [{_pct(a['ci_low'])}, {_pct(a['ci_high'])}]"


def _slo(slo: dict | None) -> str:
    """The latency SLO in words: p99 TTFT ≤ 2 s, p99 TPOT ≤ 200 ms."""
    names = {"p99_ttft_s": ("p99 TTFT", "s"), "p99_tpot_ms": ("p99 TPOT", "ms")}
    parts = []
    for k, x in (slo or {}).items():
        if x is None:
            continue
        name, unit = names.get(k, (k.replace("_", " "), ""))
        parts.append(f"{name} ≤ {_num(x)} {unit}".strip())
    return ", ".join(parts) or "none set"


def _seconds(x: float | None) -> str:
    if x is None:
        return "–"
    if x < 60:
        return f"{x:.1f} s"
    m, sec = divmod(round(x), 60)
    return f"{m} min {sec} s" if m < 60 else f"{m // 60} h {m % 60} min"


def _quality_section(ev: dict) -> str:
    rows = []
    for s in ev["systems"]:
        a = s["accuracy"]
        cited = s["source"] == "cited"
        src = f"cited: {s.get('reference') or '?'}" if cited else f"measured on {_where(ev.get('hardware'))}"
        rows.append(
            [
                s["name"],
                s.get("mode") or "",
                _accuracy(a, cited),
                _pct(s["macro_f1"]["value"]) if s.get("macro_f1") else "–",
                _pct(s.get("invalid_rate")),
                s["source"],
                src,
            ]
        )
    return (
        f"<h2>Quality on {html.escape(ev['task'])} ({ev['n_queries']} queries)</h2>"
        f'<img alt="accuracy with confidence intervals" src="data:image/png;base64,{quality_plot(ev)}">'
        + _table(["system", "answers", "accuracy [95 % CI]", "macro-F1", "invalid", "source", "provenance"], rows)
    )


def _candidates_section(rows: list[dict], chosen: str | None) -> str:
    how = {"lm": "constrained generation", "classify": "vLLM pooling, one pass"}
    table = [
        [
            f"{r['name']}{' (the verdict)' if r['name'] == chosen else ''}",
            f"{HEADS[r['head']]} ({how[r['head']]})",
            "–" if r["accuracy"] is None else _accuracy(r["accuracy"], False),
            r["gate"] or "–",
            "–" if r["requests_per_s"] is None else f"{r['requests_per_s']:.2f} (c={r['concurrency']})",
            "–"
            if r.get("usd_per_1m_requests_fully_utilised") is None
            else _usd(r["usd_per_1m_requests_fully_utilised"]),
            "–" if r["usd_per_1m_requests"] is None else _usd(r["usd_per_1m_requests"]),
            "–" if r["self_hosted_monthly_usd"] is None else _usd(r["self_hosted_monthly_usd"]),
            "–" if r["break_even_requests_per_month"] is None else f"{r['break_even_requests_per_month']:,.0f}",
            r["decision"] or "–",
        ]
        for r in rows
    ]
    return (
        "<h2>Candidates side by side</h2><p class='small'>The same test queries, gate and workload, measured here by "
        "this run; requests/s at the bench's highest load meeting the SLO; $ per 1M requests with the host busy all "
        "the time (the bench's floor), then at the configured volume (the host's monthly cost over the month's "
        "requests).</p>"
        + _table(
            ["candidate", "head", "accuracy [95 % CI]", "gate", "requests/s", "$ per 1M requests, host fully busy",
             "$ per 1M requests at the configured volume", "self-hosted $/month", "break-even requests/month",
             "decision"],
            table,
        )
    )  # fmt: skip


def _quantized_section(rows: list[dict]) -> str:
    table = []
    for q in rows:
        rep = q.get("quantize") or {}
        acc = "; ".join(f"{mode or 'answers'}: {_pct(a['value'])}" for mode, a in (q.get("accuracy") or {}).items())
        hw = _where(rep.get("hardware"))
        table.append(
            [
                q["method"],
                q["system"],
                f"{_num(rep['size_ratio'])}x" if rep.get("size_ratio") is not None else "–",
                f"{_num(rep['linear_compression'])}x" if rep.get("linear_compression") is not None else "–",
                f"{rep['perplexity_change_pct']:+.1f} %" if rep.get("perplexity_change_pct") is not None else "–",
                acc or "–",
                f"measured on {hw}" if rep else "",
                q.get("note") or ("" if q["status"] == "done" else q["status"]),
            ]
        )
    return (
        "<h2>Quantized candidates</h2><p class='small'>Size and perplexity change vs the model it was quantized "
        "from (whole checkpoint / linear layers; perplexity on held-out task conversations); accuracy as served "
        "by vLLM, in the quality table above.</p>"
        + _table(
            [
                "method",
                "system",
                "checkpoint size",
                "linear layers smaller",
                "perplexity",
                "accuracy",
                "source",
                "note",
            ],
            table,
        )
    )


def _latency_section(bench: dict) -> str:
    rows = []
    for p in bench["points"]:
        ttft, tpot = p.get("ttft_ms") or {}, p.get("tpot_ms") or {}
        ms = lambda d, k, f: "–" if d.get(k) is None else f"{d[k]:,.{f}f}"  # noqa: E731
        load = p.get("concurrency")
        if load is None:
            load = "–" if p.get("request_rate") is None else f"{_num(p['request_rate'])} req/s offered"
        rows.append(
            [
                load,
                f"{p['requests_per_s']:.2f}",
                f"{p['output_tokens_per_s']:.1f}",
                f"{ms(ttft, 'p50', 0)} / {ms(ttft, 'p99', 0)}",
                f"{ms(tpot, 'p50', 1)} / {ms(tpot, 'p99', 1)}",
                p.get("failed", 0),
                "yes" if p["meets_slo"] else "no",
            ]
        )
    hit = bench.get("prefix_cache_hit_rate")
    where = _where(bench["hardware"])
    return (
        f"<h2>Serving: vLLM, measured on {html.escape(where)}</h2>"
        f"<p>SLO: {html.escape(_slo(bench.get('slo')))}. Prefix-cache hit rate: "
        f"{_pct(None if hit is None else 100 * hit)} (share of prompt tokens served from vLLM's cache).</p>"
        + _table(
            ["concurrency", "req/s", "output tok/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "errors", "meets SLO"], rows
        )
    )


def _cost_section(be: dict, plot: str | None) -> str:
    img = (
        f'<img alt="monthly cost vs volume" src="data:image/png;base64,{_png_b64(Path(plot))}">'
        if (plot and Path(plot).is_file())
        else ""
    )
    summary = be.get("summary") or {}
    rows = [[_label(k), *_fmt(k, v, be)] for k, v in summary.items()]
    return "<h2>Cost and break-even</h2>" + img + (_table(["figure", "value", "source"], rows) if rows else "")


def _cascade_section(c: dict, cost: dict | None, plot: str | None) -> str:
    """The cascade as one more candidate: chosen on the calibration split, reported on the held-out split."""
    img = (
        f'<img alt="cascade curve" src="data:image/png;base64,{_png_b64(Path(plot))}">'
        if (plot and Path(plot).is_file())
        else ""
    )
    rows = []
    for name, p in (
        (f"all {c['candidate']}", c["all_local_test"]),
        (f"cascade, threshold {c['on_test']['threshold']:.4g}", c["on_test"]),
        (f"all {c['baseline']}", c["all_api_test"]),
    ):
        cited = p is c["all_api_test"] and c.get("estimated")  # the API's cited score: no interval
        acc = _accuracy({"value": p["accuracy"], "ci_low": p.get("ci_low"), "ci_high": p.get("ci_high")}, cited)
        rows.append([name, _pct(100 * (1 - p["local_share"])), acc, _usd(p["usd_per_1k_queries"])])
    est = (
        f"<p><b>Estimated</b>: {html.escape(c.get('assumption', ''))}</p>"
        if c.get("estimated")
        else "<p>Escalated queries scored with the API's own answers on the same prompts.</p>"
    )
    be = ""
    if cost:
        vol = (cost.get("break_even_vs_api") or {}).get("volume")
        never = "never: the API is cheaper at every volume"
        be = (
            f"<p>At the configured volume the cascade costs ${cost['monthly_usd']:,.2f}/month (local host "
            f"${cost['local_monthly_usd']:,.2f} + escalated API ${cost['escalated_api_monthly_usd']:,.2f}); "
            f"break-even vs all-API: {never if vol is None else f'{vol:,.0f} requests/month'} "
            "(computed from the measured throughput and list prices).</p>"
        )
    return (
        f"<h2>Cascade: {html.escape(c['candidate'])} first, {html.escape(c['baseline'])} when unsure</h2>"
        f"<p>Target {html.escape(_plain(c['target']))}; threshold chosen on {c['n_calibration']} calibration queries, "
        f"reported on {c['n_test']} held-out queries. Confidence: {html.escape(c['confidence'])}. "
        f"Cost rule: {html.escape(c.get('cost_rule', ''))}.</p>"
        + img
        + _table(["system", "escalated", "accuracy [95 % CI]", "$ per 1k queries"], rows)
        + est
        + be
    )


def _num(x: Any) -> str:
    """A number for a reader: integers with separators, others to 3 significant digits (at most 4 decimals,
    trailing zeros dropped)."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, int | float):
        return _plain(x)
    if not math.isfinite(x):
        return "unbounded" if x > 0 else "–"
    if float(x).is_integer() or abs(x) >= 100:
        return f"{x:,.0f}"
    decimals = 2 - math.floor(math.log10(abs(x)))
    if decimals <= 4:
        return f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa} × 10^{int(exponent)}"


def _usd(x: float) -> str:
    """Money: to the cent from $1 up, four decimals below (small per-token prices)."""
    return f"${x:,.2f}" if abs(x) >= 1 or x == 0 else f"${x:,.4f}"


def _plain(v: Any) -> str:
    """Anything else a report holds, as words: never a Python repr."""
    if isinstance(v, dict):
        if "value" in v and "unit" in v:
            return _figure(v)
        return "; ".join(f"{str(k).replace('_', ' ')}: {_plain(x)}" for k, x in v.items() if x is not None) or "–"
    if isinstance(v, list | tuple):
        return ", ".join(_plain(x) for x in v) or "–"
    if isinstance(v, int | float):
        return _num(v)
    return "–" if v is None else str(v)


# What None means, figure by figure (break-even's own reason is used where the report has one).
NONE_WORDS = {
    "break_even_requests_per_month": "never: the API is cheaper at every volume",
    "payback_months": "never (no saving at this volume)",
}


def _figure(v: dict, key: str = "", none: str | None = None) -> str:
    """One figure {value, unit, ...} for a reader, keyed on its unit."""
    x, unit = v.get("value"), v.get("unit") or ""
    if x is None:
        return none or NONE_WORDS.get(key, "–")
    if not isinstance(x, int | float) or isinstance(x, bool):
        return _plain(x)
    if key == "payback_months" and x == 0:
        return "nothing to pay back (no one-off costs)"
    if unit == "USD":
        return _usd(x)
    if unit == "USD/month":
        return f"${x:,.2f}/month"
    if unit == "USD/request":
        return f"{_usd(x * 1000)} per 1,000 requests"
    if unit == "USD/1M tokens":
        return f"{_usd(x)} per 1M tokens"
    if unit.startswith("USD/"):
        return f"{_usd(x)}/{unit[4:]}"
    if unit in ("share", "fraction"):
        return f"{100 * x:.1f} %"
    if unit in ("percent", "%"):
        return f"{x:.1f} %"
    if unit == "requests/month":
        return f"{x:,.0f} requests/month"
    if unit == "hosts":
        n = round(x)
        return f"{n} host" + ("" if n == 1 else "s")
    if unit == "months":
        return f"{_num(x)} month" + ("" if x == 1 else "s")
    return f"{_num(x)} {unit}".strip()


def _where(hw: Any) -> str:
    """The hardware a number was measured on: its GPUs, or its CPU and cores."""
    if not isinstance(hw, dict):
        return str(hw) if hw else "?"
    if hw.get("gpus"):
        return ", ".join(str(g) for g in hw["gpus"])
    cores = f", {hw['cpu_cores']} cores" if hw.get("cpu_cores") else ""
    return f"{hw.get('cpu') or '?'}{cores}"


def _provenance(v: dict) -> str:
    """Where a figure comes from, in words: list price of a date, measured on hardware, computed from what."""
    src = v.get("source", "")
    listed = ""
    if v.get("date") or v.get("reference"):
        unverified = " (unverified)" if v.get("verified") is False else ""
        listed = ", ".join(
            x for x in (f"list price {v.get('date') or ''}".strip() + unverified, v.get("reference")) if x
        )
    if src == "list_price":
        return listed or "list price"
    if src == "measured":
        return f"measured on {_where(v.get('hardware'))}"
    if src == "cited":
        return f"cited: {v.get('reference') or '?'}"
    if src == "user":
        return "given" + (f": {v['from']}" if v.get("from") else " (run config / workload)")
    how = src.replace("_", " ") if src and src != "computed" else "computed"
    parts = [f"{how}: {v['from']}" if v.get("from") else how]
    if listed:
        parts.append(listed)
    if v.get("hardware"):
        parts.append(f"throughput measured on {_where(v['hardware'])}")
    return "; ".join(parts)


def _fmt(key: str, v: Any, be: dict | None = None) -> tuple[str, str]:
    """A summary entry as (value, provenance) for a reader; strings are shown as they are."""
    if isinstance(v, dict) and "value" in v:
        none = None
        if key.startswith("break_even") and (reason := ((be or {}).get("break_even") or {}).get("reason")):
            none = reason if reason.startswith("never") else f"never: {reason}"
        return _figure(v, key, none), _provenance(v)
    return _plain(v), ""


LABELS = {
    "requests_per_month": "requests per month",
    "api_input_tokens": "API prompt tokens per request",
    "api_monthly_usd": "API per month",
    "api_per_1m_tokens_usd": "API per 1M tokens",
    "self_hosted": "self-hosted",
    "self_hosted_monthly_usd": "self-hosted per month",
    "self_hosted_per_1m_input_usd": "self-hosted per 1M input tokens",
    "self_hosted_per_1m_output_usd": "self-hosted per 1M output tokens",
    "floor_per_1m_input_usd": "self-hosted per 1M input tokens, host always busy",
    "floor_per_1m_output_usd": "self-hosted per 1M output tokens, host always busy",
    "replicas": "hosts needed",
    "operations_monthly_usd": "operations per month",
    "break_even_requests_per_month": "break-even volume",
    "payback_months": "payback",
}


def _label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    words = {"api": "API", "usd": "", "1m": "1M", "rps": "requests/s", "llm": "LLM"}
    return " ".join(w for w in (words.get(p, p) for p in key.split("_")) if w)


CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}.verdict{font-size:2em;font-weight:700;padding:.4em .6em;border-radius:6px;display:inline-block}
.GO{background:#d4f7d4;color:#075e07}.NO-GO{background:#fbd6d6;color:#8a0b0b}.INCOMPLETE,.NEEDS-BASELINE{background:#fff1c2}
img{max-width:100%}.small{color:#666;font-size:.9em}"""


def _when(iso: str) -> str:
    """2026-12-01T23:03:51+00:00 → 2026-12-01 23:03 UTC."""
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if t.utcoffset() is not None:
        t = t.astimezone(dt.UTC)
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def render_html(report: dict) -> str:
    v = report["verdict"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>offramp report: {html.escape(report['config']['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>offramp: can {html.escape(report['config']['model'])} replace the API?</h1>",
        f"<div class='verdict {html.escape(v['verdict'])}'>{html.escape(v['verdict'])}</div>",
        f"<p>{html.escape(v['reason'])}</p>",
        f"<p class='small'>Generated {html.escape(_when(report['created_at']))} on "
        f"{html.escape(_where(report['hardware']))}. "
        "Provenance: <b>measured</b> = measured here on the hardware named; <b>list price</b> = vendor price of "
        "the date given (offramp/prices.yaml); <b>cited</b> = published score, not measured here.</p>",
    ]
    if (report.get("data") or {}).get("traffic"):
        parts.append(_data_section(report["data"]))
    if report.get("eval"):
        parts.append(_quality_section(report["eval"]))
    if len(report.get("candidates") or []) > 1:
        parts.append(_candidates_section(report["candidates"], report["verdict"].get("candidate")))
    if report.get("quantized"):
        parts.append(_quantized_section(report["quantized"]))
    if report.get("breakeven"):
        parts.append(_cost_section(report["breakeven"], report.get("breakeven_plot")))
    if report.get("cascade"):
        parts.append(_cascade_section(report["cascade"], report.get("cascade_cost"), report.get("cascade_plot")))
    if report.get("bench"):
        parts.append(_latency_section(report["bench"]))
    parts.append(
        "<h2>Stages</h2>"
        + _table(
            ["stage", "status", "seconds", "note"],
            [[s["name"], s["status"], _seconds(s.get("seconds")), s.get("error") or ""] for s in report["stages"]],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write(run_dir: Path, report: dict) -> Path:
    from offramp.paths import write_json

    write_json(run_dir / "report.json", report)
    out = run_dir / "report.html"
    atomic_write_text(out, render_html(report))
    return out
