"""breakeven.html: the headline figures with their sources (as the pipeline report shows them), and the traffic
the workload was measured from, for a reader without the JSON."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any


def _rows(table: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in table)
    return f"<table><tbody>{body}</tbody></table>"


def traffic_section(traffic: dict[str, Any]) -> str:
    """Which figure came from which captured calls, which a flag overrode, and what the traffic paid."""
    paid = traffic["paid"]
    rows = [(k, v) for k, v in traffic["provenance"].items()]
    rows += [(k, v) for k, v in traffic["overridden"].items()]
    per = paid["per_request_usd"]
    rows.append(("paid per request", "unknown (no priced call)" if per is None else f"${per:.6f}: {paid['source']}"))
    rows.append(("API priced", traffic["api"]))
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in traffic["warnings"])
    return (
        f"<h2>Workload measured from {traffic['calls']:,} captured calls</h2>"
        f"<p>{html.escape(traffic['spec'])}</p>" + _rows(rows) + (f"<ul>{notes}</ul>" if notes else "")
    )


def render(body: dict[str, Any], plot: Path | None) -> str:
    from offramp.pipeline.report import CSS, _cost_section

    verdict = body["decision"]["verdict"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in body["decision"]["reasons"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>offramp breakeven</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(body['api']['name'])} vs {html.escape(body['model'])}: {html.escape(verdict)}</h1>",
        f"<ul>{reasons}</ul>",
        _cost_section(body, str(plot) if plot else None),
    ]
    if body.get("traffic"):
        parts.append(traffic_section(body["traffic"]))
    parts.append("<h2>Assumptions</h2><ul>")
    parts += [f"<li>{html.escape(a)}</li>" for a in body["assumptions"]]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
