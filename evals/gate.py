"""The go/no-go verdict of a gate (its grammar is `offramp.expressions`) on an eval's results."""

from __future__ import annotations

from offramp.expressions import OPS, Gate


def verdict(gate: Gate, candidate: dict, baseline: dict | None, difference: dict | None) -> dict:
    """GO / NO-GO on the point estimates, with the reason and how sure the data can make us."""
    value = candidate[gate.metric]["value"]
    base = baseline[gate.metric]["value"] if baseline else None
    bound = gate.bound(base)
    ok = gate.passes(value, base)
    what = f"{candidate['name']} {gate.metric} {value:.2f}"
    against = f"{gate.op} {bound:.2f}" + (f" ({baseline['name']} {base:.2f} {gate.offset:+g})" if gate.relative else "")
    reason = f"{what} {'meets' if ok else 'fails'} {against}"
    ci = candidate[gate.metric]
    low_ok, high_ok = gate.passes(ci["ci_low"], base), gate.passes(ci["ci_high"], base)
    if difference is not None and difference.get("metric", "accuracy") == gate.metric and gate.relative:
        # paired: both systems answered the same queries, so the difference's interval is the honest one
        d = difference
        low_ok, high_ok = OPS[gate.op](d["ci_low"], gate.offset), OPS[gate.op](d["ci_high"], gate.offset)
        reason += f"; paired difference {d['value']:+.2f} points, 95 % CI [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
    else:
        reason += f"; candidate 95 % CI [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]"
        if baseline and baseline.get("source") == "cited":
            reason += f" vs a cited score ({baseline.get('reference')}) with no interval"
    conclusive = low_ok == high_ok
    if not conclusive:
        reason += " — inconclusive: the interval straddles the bound, evaluate on more queries"
    return {
        "expression": gate.expression,
        "metric": gate.metric,
        "verdict": "GO" if ok else "NO-GO",
        "reason": reason,
        "conclusive": conclusive,
        "bound": round(bound, 2),
        "candidate": candidate["name"],
        "baseline": baseline["name"] if baseline else None,
    }
