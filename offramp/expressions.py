"""The expressions a user writes in a config or on a command line, parsed in core so the pipeline checks them at
load without importing a stage.

The go/no-go gate: `METRIC OP BOUND`, where BOUND is a number or `baseline [+|- number]`. Examples:
`accuracy>=baseline-2`, `macro_f1 > 70`, `accuracy >= baseline`, `chrf>=baseline-2` (generation tasks). Metrics are
in points of 0-100.

The cascade's target: `accuracy>=baseline-1`, `accuracy>=75`, or an escalation budget instead.
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


_TARGET = re.compile(
    r"^\s*accuracy\s*>=\s*(?:baseline\s*(?P<sign>[+-])\s*(?P<delta>\d+(?:\.\d+)?)|"
    r"(?P<base>baseline)|(?P<abs>\d+(?:\.\d+)?))\s*$"
)


def parse_target(target: str | None, max_escalation: float | None) -> tuple[str, float | None, float | None]:
    """('accuracy', offset or absolute, max escalation). Exactly one kind of target."""
    if (target is None) == (max_escalation is None):
        raise OfframpError("give exactly one of --target 'accuracy>=baseline-1' or --max-escalation 0.2")
    if max_escalation is not None:
        if not 0 <= max_escalation <= 1:
            raise OfframpError(f"--max-escalation must be in [0, 1], got {max_escalation}")
        return "escalation", None, max_escalation
    m = _TARGET.match(target or "")
    if not m:
        raise OfframpError(f"malformed target {target!r}: expected 'accuracy>=baseline-1' or 'accuracy>=75'")
    if m["abs"]:
        return "absolute", float(m["abs"]), None
    delta = float(m["delta"] or 0) * (-1 if m["sign"] == "-" else 1)
    return "relative", delta, None
