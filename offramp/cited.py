"""Published scores a system may stand in for when no API key is at hand. Cited, never measured here."""

from __future__ import annotations

from dataclasses import dataclass

from offramp.errors import OfframpError

LOUKAS_2023 = (
    "Loukas et al., 'Making LLMs Worth Every Penny: Resource-Limited Text Classification in Banking', "
    "ICAIF 2023, Table 4"
)


@dataclass(frozen=True)
class CitedScore:
    task: str
    model: str
    setting: str
    metric: str  # as the paper names it
    value: float  # percent
    reference: str
    note: str = ""
    cost_usd: float | None = None  # what the paper paid for its test queries, at its date's prices
    cost_queries: int | None = None
    cost_reference: str | None = None


CITED: dict[str, CitedScore] = {
    f"banking77/{key}": score
    for key, score in {
        "gpt-4-1shot": CitedScore(
            "banking77",
            "GPT-4",
            "1-shot",
            "micro-F1",
            80.4,
            LOUKAS_2023,
            cost_usd=620.0,
            cost_queries=3080,
            cost_reference=LOUKAS_2023.replace("Table 4", "Table 5"),
        ),  # fmt: skip
        "gpt-3.5-1shot": CitedScore("banking77", "GPT-3.5", "1-shot", "micro-F1", 75.2, LOUKAS_2023),
        "claude-2-1shot": CitedScore("banking77", "Claude 2", "1-shot", "micro-F1", 76.8, LOUKAS_2023),
    }.items()
}
# Single-label multi-class: micro-F1 equals accuracy, so the score stands for `accuracy` in the gate.
METRIC_AS = {"micro-F1": "accuracy"}


def lookup(key: str) -> CitedScore:
    if key not in CITED:
        raise OfframpError(f"unknown cited score {key!r}; known: {', '.join('cited:' + k for k in sorted(CITED))}")
    return CITED[key]


def for_task(key: str, task: str) -> CitedScore:
    score = lookup(key)
    if score.task != task:
        raise OfframpError(f"cited:{key} is a {score.task} score, but the task is {task!r}")
    return score
