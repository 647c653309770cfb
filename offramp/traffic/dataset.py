"""`offramp data from-traffic`: captured API calls → the chat JSONL splits `offramp data prepare` writes.

Rules (also written into data_report.json, `rules`):
- selected: the calls matching tag / model / window that the API answered (2xx or unknown status, a non-empty
  answer) with plain chat messages (system / developer / user / assistant turns of text);
- the record: the request's messages as they were sent (system prompt and earlier turns kept; `--system` replaces
  the system prompt only when given), then the API's answer as the final assistant turn (distillation);
- the test split is the latest slice in time: the calls from the cut time on, where the cut leaves
  `test_fraction` of the selected calls after it (calls at the same instant stay together); it is frozen by its
  time range, and a prompt that also occurs before the cut is kept in test only;
- exact duplicates (same request body without the caller fields: the store's `request_hash`) are kept once;
- labels.json when the answers form a label set, by the traffic report's rule (`offramp.traffic.report.answers`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offramp.errors import OfframpError
from offramp.traffic.store import Call, Store, canonical

PREFIX = "traffic:"
TERMS_NOTE = (
    "the answers in these splits were written by a provider's API; some providers' terms restrict using outputs "
    "to train other models (e.g. to develop competing models): check your provider's terms before fine-tuning on them"
)
ROLE_OF = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Selection:
    store: str  # a SQLite path or a database URL, as given
    tag: str | None = None
    model: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def filters(self) -> dict[str, Any]:
        return {"tag": self.tag, "model": self.model, "since": self.since, "until": self.until}

    def source(self) -> str:
        """`traffic:STORE?tag=…` with the store's password hidden: what the data report records."""
        from offramp.traffic.store import shown

        given = [(k, v) for k, v in self.filters().items() if v is not None]
        query = "&".join(f"{k}={v.isoformat() if isinstance(v, dt.datetime) else v}" for k, v in given)
        return f"{PREFIX}{shown(self.store)}" + (f"?{query}" if query else "")


def is_traffic(source: str) -> bool:
    return source.startswith(PREFIX)


def parse_source(source: str) -> Selection:
    """`traffic:PATH_OR_URL[?tag=T&model=M&since=ISO&until=ISO]` (the pipeline's `task.source`), read by the one
    spec parser `breakeven`/`bench --traffic` use (a PostgreSQL URL keeps its own query parameters)."""
    from offramp.traffic.workload import parse_spec

    body = source.removeprefix(PREFIX)
    if not body.partition("?")[0]:
        raise OfframpError(f"task.source {source!r}: name the store, e.g. traffic:traffic.db?tag=support/intent")
    spec = parse_spec(body, flag="task.source")
    return Selection(spec.store, spec.tag, spec.model, spec.since, spec.until)


def default_name(sel: Selection) -> str:
    """The task's name: its tag (e.g. `support-intent`), else the store file's stem."""
    raw = sel.tag or Path(sel.store.split("?", 1)[0].rstrip("/")).stem or "traffic"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "traffic"


def chat_messages(request: dict, system: str | None) -> list[dict] | None:
    """The request's messages as chat records hold them, or None when a turn is not plain text (tools, images)."""
    from offramp.traffic.importers import _text

    out = []
    for m in request.get("messages") or []:
        role = ROLE_OF.get(m.get("role")) if isinstance(m, dict) else None
        text = _text(m.get("content")) if role else None
        if role is None or text is None or m.get("tool_calls"):
            return None
        out.append({"role": role, "content": text})
    if system is not None:
        out = [{"role": "system", "content": system}] + [m for m in out if m["role"] != "system"]
    return out if any(m["role"] == "user" for m in out) and out[-1]["role"] == "user" else None


def answered(c: Call) -> bool:
    return (c.status is None or 200 <= c.status < 300) and bool((c.answer or "").strip())


def latest_slice(calls: list[Call], test_fraction: float) -> tuple[list[Call], list[Call]]:
    """(before the cut, from the cut on), calls in time order; the cut leaves ~test_fraction of them after it."""
    if not 0 < test_fraction < 1:
        raise OfframpError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(len(calls) * test_fraction))
    cut = calls[len(calls) - n_test].time
    return [c for c in calls if c.time < cut], [c for c in calls if c.time >= cut]


def _prompt_key(messages: list[dict]) -> str:
    return canonical(messages)


def _dedup(calls: list[Call]) -> list[Call]:
    seen: set[str] = set()
    out = []
    for c in calls:
        if c.request_hash not in seen:
            seen.add(c.request_hash or "")
            out.append(c)
    return out


def _range(calls: list[Call]) -> dict[str, str]:
    return {"first": calls[0].time.isoformat(), "last": calls[-1].time.isoformat()}


@dataclass
class Split:
    train: list[Call]
    test: list[Call]
    counts: dict[str, int]
    labels: list[str] | None  # None: the answers are free text
    answers: dict[str, Any]


def select(store: Store, sel: Selection, *, test_fraction: float, max_labels: int, system: str | None) -> Split:
    """The calls of each split, by the rules above; every way to end with nothing is one OfframpError."""
    from offramp.traffic.report import _empty, answers

    calls = store.query(**sel.filters())
    if not calls:
        raise OfframpError(_empty(store, sel.tag, sel.model, sel.since, sel.until))
    usable = [c for c in calls if answered(c) and chat_messages(c.request, system) is not None]
    counts = {"calls": len(calls), "unanswered": sum(not answered(c) for c in calls)}
    counts["not_plain_chat"] = len(calls) - counts["unanswered"] - len(usable)
    if not usable:
        raise OfframpError(
            f"--store {store.name}: none of the {len(calls):,} selected calls is an answered chat call with text turns "
            f"({counts['unanswered']} unanswered or failed, {counts['not_plain_chat']} with tools or non-text content)"
        )
    summary = answers(usable, max_labels)
    labels = None
    if summary["kind"] == "classification":
        common = Counter(c.answer.strip() for c in usable).most_common(max_labels)  # type: ignore[union-attr]
        labels = sorted(a for a, _ in common)
        kept = [c for c in usable if c.answer.strip() in set(labels)]  # type: ignore[union-attr]
        counts["outside_label_set"] = len(usable) - len(kept)
        usable = kept
    counts["selected"] = len(usable)
    before, after = latest_slice(usable, test_fraction)
    test = _dedup(after)
    in_test = {_prompt_key(chat_messages(c.request, None) or []) for c in test}
    train_all = [c for c in before if _prompt_key(chat_messages(c.request, None) or []) not in in_test]
    train = _dedup(train_all)
    counts |= {
        "duplicates_removed": len(after) - len(test) + len(train_all) - len(train),
        "moved_to_test_only": len(before) - len(train_all),
        "train": len(train),
        "test": len(test),
    }
    if not train or not test:
        raise OfframpError(
            f"--store {store.name}: too few calls for a test split: {len(usable)} answered call(s) give train "
            f"{len(train)} / test {len(test)} once duplicates are removed and the latest {test_fraction:.0%} is "
            "held out; give more traffic or a wider window"
        )
    return Split(train, test, counts, labels, summary)


def _record(c: Call, system: str | None, labels: list[str] | None) -> dict:
    answer = c.answer.strip() if labels is not None else c.answer  # type: ignore[union-attr]
    return {"messages": [*(chat_messages(c.request, system) or []), {"role": "assistant", "content": answer}]}


def from_traffic(
    sel: Selection,
    out: Path,
    *,
    name: str | None = None,
    test_fraction: float = 0.2,
    max_labels: int = 100,
    system: str | None = None,
    force: bool = False,
) -> dict:
    """Write train.jsonl, test.jsonl, api_prompts.jsonl, labels.json (label sets only), data_report.json."""
    from offramp.data import answer_warnings, write_jsonl
    from offramp.paths import atomic_dir, write_json
    from offramp.traffic.store import open_store

    if max_labels < 1:
        raise OfframpError("--max-labels must be at least 1")
    if system is not None and not system.strip():
        raise OfframpError("--system is empty; leave it out to keep the captured system prompts")
    if sel.since and sel.until and sel.until <= sel.since:
        raise OfframpError(f"--until {sel.until.isoformat()} is not after --since {sel.since.isoformat()}")
    with open_store(sel.store, create=False) as store:
        split = select(store, sel, test_fraction=test_fraction, max_labels=max_labels, system=system)
    train = [_record(c, system, split.labels) for c in split.train]
    test = [_record(c, system, split.labels) for c in split.test]
    api = [_record(c, None, split.labels) for c in split.test]  # what the API was sent for the same queries
    warnings = answer_warnings([r["messages"][-1]["content"] for r in train + test], split=True) if split.labels else []
    if untimed := sum(c.time_source == "import" for c in split.train + split.test):
        warnings.append(f"{untimed} call(s) carry only their import time: their order in time is the import order")
    report = data_report(sel, name or default_name(sel), split, test_fraction, system, warnings)
    with atomic_dir(Path(out), overwrite=True, force=force) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "test.jsonl", test)
        write_jsonl(tmp / "api_prompts.jsonl", api)
        if split.labels is not None:
            write_json(tmp / "labels.json", split.labels)
        write_json(tmp / "data_report.json", report)
    return report


def data_report(
    sel: Selection, name: str, split: Split, test_fraction: float, system: str | None, warnings: list[str]
) -> dict:
    from offramp.reports import now_iso

    calls = split.train + split.test
    priced = [c.cost_usd for c in calls if c.cost_usd is not None]
    ordered = sorted(calls, key=lambda c: c.time)
    labels = split.labels or []
    return {
        "stage": "data",
        "created_at": now_iso(),
        "task": name,
        "source": sel.source(),
        "kind": "classification" if split.labels is not None else "generation",
        "seed": 0,  # nothing is drawn at random: the split is by time
        "prompt_style": "--system" if system is not None else "as captured",
        "labels": len(labels),
        "train": len(split.train),
        "test": len(split.test),
        "train_labels": len({c.answer.strip() for c in split.train}) if labels else None,  # type: ignore[union-attr]
        "test_labels": len({c.answer.strip() for c in split.test}) if labels else None,  # type: ignore[union-attr]
        "teacher": sorted({c.model for c in calls if c.model}),
        "api_prompts": {"file": "api_prompts.jsonl", "template": "the captured requests, as the API was sent them"},
        "traffic": {
            "store": sel.source().removeprefix(PREFIX).split("?", 1)[0],
            "filters": {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in sel.filters().items()},
            "window": _range(ordered),
            "train_range": _range(split.train),
            "test_range": _range(split.test),
            "test_fraction": test_fraction,
            "counts": split.counts,
            "answers": split.answers,
            "spend": {
                "usd": sum(priced),
                "priced_calls": len(priced),
                "usd_per_request": sum(priced) / len(priced) if priced else None,
                "rule": "list-price cost stored with each call / the calls that carry one (the calls in the splits)",
            },
        },
        "terms_note": TERMS_NOTE,
        "rules": __doc__.split("Rules (also written into data_report.json, `rules`):\n", 1)[1].strip(),
        "warnings": warnings,
    }
