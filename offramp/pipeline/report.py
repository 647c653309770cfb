"""The decision report: one self-contained HTML page (plots embedded) plus report.json.

Every number shown carries its provenance: measured here (on which hardware), list price (of which date),
or cited (which paper).
"""

from __future__ import annotations

import base64
import html
import io
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


def collect(cfg: dict, results: list[StageResult]) -> dict:
    dirs = {r.name: r.workdir for r in results if r.status in ("done", "cached")}
    problems: list[str] = []

    def report(stage: str, file: str, kind: str | None = None) -> Any:
        return _maybe(dirs[stage] / file, kind, problems) if stage in dirs else None

    ev = report("eval", "eval_report.json", "eval")
    bench = report("bench", "bench_report.json", "bench")
    be = report("breakeven", "breakeven_report.json")
    ft = report("finetune", "ft/finetune_report.json")
    cascade = report("cascade", "cascade/cascade_report.json")
    cascade_cost = report("cascade", "breakeven/breakeven_report.json")
    quantized = quantized_candidates(dirs, ev, problems)
    failed = [r for r in results if r.status in ("failed", "skipped")]
    return {
        "created_at": now_iso(),
        "hardware": hardware_summary(),
        "config": cfg,
        "verdict": verdict(ev, be, failed, problems),
        "problems": problems,
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
    }


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
        rep = _maybe(Path(q["checkpoint"]) / "quantize_report.json", None, problems) if q.get("checkpoint") else None
        keep = ("size_ratio", "linear_compression", "perplexity_change_pct", "quantize_time_s", "hardware")
        rows.append(
            {
                **{k: q.get(k) for k in ("method", "system", "status", "evaluated", "note")},
                "quantize": {k: rep.get(k) for k in keep} if rep else None,
                "accuracy": {s.get("mode") or "": s["accuracy"] for s in by_name.get(q["system"], [])},
            }
        )
    return rows


def verdict(ev: dict | None, be: dict | None, failed: list[StageResult], problems: list[str]) -> dict:
    if problems:
        return {"verdict": "INCOMPLETE", "reason": f"unreadable stage reports: {'; '.join(problems)}"}
    if be and isinstance(be.get("decision"), dict):
        d = be["decision"]
        return {"verdict": d.get("verdict", "?"), "reason": "; ".join(d.get("reasons") or []) or d.get("reason", "")}
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
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    """Metrics arrive in percent points (0-100)."""
    return "–" if x is None else f"{x:.1f} %"


def _quality_section(ev: dict) -> str:
    rows = []
    for s in ev["systems"]:
        a = s["accuracy"]
        src = s.get("reference") if s["source"] == "cited" else f"measured on {ev['hardware'].get('cpu', '?')}"
        rows.append(
            [
                s["name"],
                s.get("mode") or "",
                f"{_pct(a['value'])} [{_pct(a['ci_low'])}, {_pct(a['ci_high'])}]",
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


def _quantized_section(rows: list[dict]) -> str:
    table = []
    for q in rows:
        rep = q.get("quantize") or {}
        acc = "; ".join(f"{mode or 'answers'}: {_pct(a['value'])}" for mode, a in (q.get("accuracy") or {}).items())
        hw = (rep.get("hardware") or {}).get("cpu", "?")
        table.append(
            [
                q["method"],
                q["system"],
                f"{rep['size_ratio']}x" if rep.get("size_ratio") is not None else "–",
                f"{rep['linear_compression']}x" if rep.get("linear_compression") is not None else "–",
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
        ttft, tpot = p["ttft_ms"], p["tpot_ms"]
        rows.append(
            [
                p.get("concurrency") or p.get("request_rate"),
                f"{p['requests_per_s']:.2f}",
                f"{p['output_tokens_per_s']:.1f}",
                f"{ttft.get('p50', 0):.0f} / {ttft.get('p99', 0):.0f}",
                f"{tpot.get('p50', 0):.1f} / {tpot.get('p99', 0):.1f}",
                p["failed"],
                "yes" if p["meets_slo"] else "no",
            ]
        )
    hit = bench.get("prefix_cache_hit_rate")
    hw = bench["hardware"]
    where = ", ".join(hw.get("gpus") or []) or f"{hw.get('cpu')}, {hw.get('cpu_cores')} cores"
    return (
        f"<h2>Serving: vLLM, measured on {html.escape(where)}</h2>"
        f"<p>SLO: {html.escape(str(bench['slo']))}. Prefix-cache hit rate: {_pct(hit)}.</p>"
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
    rows = [[k.replace("_", " "), _fmt(v)] for k, v in summary.items()]
    return "<h2>Cost and break-even</h2>" + img + (_table(["figure", "value (source)"], rows) if rows else "")


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
        ci = f" [{_pct(p.get('ci_low'))}, {_pct(p.get('ci_high'))}]" if "ci_low" in p else ""
        rows.append(
            [name, f"{1 - p['local_share']:.0%}", f"{_pct(p['accuracy'])}{ci}", f"${p['usd_per_1k_queries']:.4g}"]
        )
    est = (
        f"<p><b>Estimated</b>: {html.escape(c.get('assumption', ''))}</p>"
        if c.get("estimated")
        else "<p>Escalated queries scored with the API's own answers on the same prompts.</p>"
    )
    be = ""
    if cost:
        vol = (cost.get("break_even_vs_api") or {}).get("volume")
        be = (
            f"<p>At the configured volume the cascade costs ${cost['monthly_usd']:,.2f}/month (local host "
            f"${cost['local_monthly_usd']:,.2f} + escalated API ${cost['escalated_api_monthly_usd']:,.2f}); "
            f"break-even vs all-API: {'never' if vol is None else f'{vol:,.0f} requests/month'} "
            "(computed from the measured throughput and list prices).</p>"
        )
    return (
        f"<h2>Cascade: {html.escape(c['candidate'])} first, {html.escape(c['baseline'])} when unsure</h2>"
        f"<p>Target {html.escape(str(c['target']))}; threshold chosen on {c['n_calibration']} calibration queries, "
        f"reported on {c['n_test']} held-out queries. Confidence: {html.escape(c['confidence'])}. "
        f"Cost rule: {html.escape(c.get('cost_rule', ''))}.</p>"
        + img
        + _table(["system", "escalated", "accuracy [95 % CI]", "$ per 1k queries"], rows)
        + est
        + be
    )


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "value" in v:
        src = v.get("source", "")
        detail = v.get("date") or v.get("reference") or (v.get("hardware") or {}).get("cpu", "")
        return f"{v['value']} {v.get('unit', '')} ({src}{', ' + str(detail) if detail else ''})"
    return str(v)


CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}.verdict{font-size:2em;font-weight:700;padding:.4em .6em;border-radius:6px;display:inline-block}
.GO{background:#d4f7d4;color:#075e07}.NO-GO{background:#fbd6d6;color:#8a0b0b}.INCOMPLETE{background:#fff1c2}
img{max-width:100%}.small{color:#666;font-size:.9em}"""


def render_html(report: dict) -> str:
    v = report["verdict"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>offramp report: {html.escape(report['config']['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>offramp: can {html.escape(report['config']['model'])} replace the API?</h1>",
        f"<div class='verdict {html.escape(v['verdict'])}'>{html.escape(v['verdict'])}</div>",
        f"<p>{html.escape(v['reason'])}</p>",
        f"<p class='small'>Generated {report['created_at']} on {html.escape(report['hardware'])}. "
        "Provenance: <b>measured</b> = measured here on the hardware named; <b>list price</b> = vendor price of "
        "the date given (offramp/prices.yaml); <b>cited</b> = published score, not measured here.</p>",
    ]
    if report.get("eval"):
        parts.append(_quality_section(report["eval"]))
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
            [[s["name"], s["status"], s["seconds"], s["error"] or ""] for s in report["stages"]],
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
