"""The go/no-go gate: `METRIC OP BOUND`, where BOUND is a number or `baseline [+|- number]`.

Examples: `accuracy>=baseline-2`, `macro_f1 > 70`, `accuracy >= baseline`, `chrf>=baseline-2` (generation tasks).
Metrics are in points of 0-100.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from offramp.errors import OfframpError

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
GENERATION_METRICS = ("chrf", "bleu", "rougeL", "exact_match")  # offramp.evals.metrics.GEN_METRICS
METRICS = CLASSIFICATION_METRICS + GENERATION_METRICS
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_GATE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_0-9]+)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<baseline>baseline)\s*(?:(?P<sign>[+-])\s*(?P<delta>\d+(?:\.\d+)?))?|(?P<number>\d+(?:\.\d+)?))\s*$"
)


@dataclass(frozen=True)
class Gate:
    expression: str
    metric: str
    op: str
    relative: bool  # bound is baseline + offset, else offset is an absolute bound
    offset: float

    def bound(self, baseline: float | None) -> float:
        if not self.relative:
            return self.offset
        if baseline is None:
            raise OfframpError(f"gate {self.expression!r} compares with the baseline, but there is none")
        return baseline + self.offset

    def passes(self, value: float, baseline: float | None) -> bool:
        return OPS[self.op](value, self.bound(baseline))


def parse_gate(expression: str) -> Gate:
    m = _GATE.match(expression or "")
    if not m:
        raise OfframpError(
            f"malformed gate {expression!r}: expected METRIC OP BOUND, e.g. 'accuracy>=baseline-2' or "
            f"'macro_f1>70' (METRIC: {', '.join(METRICS)}; OP: >=, >, <=, <)"
        )
    if m["metric"] not in METRICS:
        raise OfframpError(f"gate {expression!r}: unknown metric {m['metric']!r}; use {', '.join(METRICS)}")
    if m["baseline"]:
        offset = float(m["delta"] or 0) * (-1 if m["sign"] == "-" else 1)
        return Gate(expression.strip(), m["metric"], m["op"], True, offset)
    value = float(m["number"])
    if value > 100:
        raise OfframpError(f"gate {expression!r}: {m['metric']} is in points of 0-100, got {value}")
    if 0 < value < 1:
        raise OfframpError(
            f"gate {expression!r}: {m['metric']} is in points of 0-100, and {value} looks like a fraction; "
            f"did you mean {m['metric']}{m['op']}{value * 100:g}?"
        )
    return Gate(expression.strip(), m["metric"], m["op"], False, value)


def check_gate_metric(gate: Gate, kind: str, metric: str | None) -> None:
    """The gate must judge a metric the task reports: accuracy / macro-F1 for classification; the chosen metric or
    exact match for generation."""
    allowed = CLASSIFICATION_METRICS if kind == "classification" else tuple(dict.fromkeys((metric, "exact_match")))
    if gate.metric not in allowed:
        what = "a classification task" if kind == "classification" else f"this generation task (--metric {metric})"
        raise OfframpError(
            f"gate {gate.expression!r}: {gate.metric} is not reported for {what}; use {', '.join(allowed)}"
        )


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
