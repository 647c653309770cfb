"""A traffic source (`STORE[?tag=T&model=M&since=ISO&until=ISO]`) and the workload measured from it.

The spec is parsed here and nowhere else. STORE is a SQLite file path or a `postgresql://` URL, which may carry a
query string of its own (`?sslmode=require`): in the part after the first `?`, the keys `tag`, `model`, `since`
and `until` are offramp's and are taken out; every other pair stays with the URL, as written. A SQLite path has
no query of its own, so any other key there is a typo and an error. Values may be percent-encoded (`%26` for
`&`, `%20` for a space); a `+` stays a plus, as in a time zone offset `+01:00`.

The figures reuse `offramp traffic report`'s rules (offramp/traffic/report.py): the window, hourly rates,
peak-to-average, the monthly extrapolation, token statistics and the stored list-price spend.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from offramp.errors import OfframpError
from offramp.traffic.store import Call, Store, shown

KEYS = ("tag", "model", "since", "until")
SHORT_WINDOW_H = 1.0  # below this the monthly volume is an extrapolation from minutes: warned, not refused
DAY_H = 24.0  # below this the peak-to-average has not seen a daily cycle


@dataclass(frozen=True)
class TrafficSpec:
    store: str  # a SQLite path or a URL (with its own query, offramp's keys taken out)
    tag: str | None = None
    model: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    text: str = ""  # the spec as given, the store's password hidden

    def filters(self) -> dict[str, Any]:
        return {"tag": self.tag, "model": self.model, "since": self.since, "until": self.until}


def _is_url(store: str) -> bool:
    return "://" in store


def parse_spec(spec: str, flag: str = "--traffic") -> TrafficSpec:
    """`STORE[?tag=…&model=…&since=…&until=…]`; a bad key, value or window is one OfframpError."""
    from offramp.traffic.cli import parse_time

    store, sep, query = spec.strip().partition("?")
    if not store:
        raise OfframpError(f"{flag} {spec!r}: give a store: a SQLite path or a postgresql:// URL, then ?tag=…")
    ours: dict[str, str] = {}
    rest: list[str] = []
    for pair in query.split("&") if sep else []:
        if not pair:
            continue
        key, eq, value = pair.partition("=")
        key = unquote(key)
        if key not in KEYS:
            if not _is_url(store):
                raise OfframpError(f"{flag}: unknown filter {key!r} in {spec!r}; use {', '.join(KEYS)}")
            rest.append(pair)  # the URL's own parameter (sslmode=…): kept as written
            continue
        if key in ours:
            raise OfframpError(f"{flag}: {key} given twice in {shown_spec(spec)!r}")
        if not eq or not value:
            raise OfframpError(f"{flag}: {key} has no value in {shown_spec(spec)!r} (e.g. ?{key}=…)")
        ours[key] = unquote(value)
    since = parse_time(ours.get("since"), f"{flag} ?since=")
    until = parse_time(ours.get("until"), f"{flag} ?until=")
    if since and until and until <= since:
        raise OfframpError(f"{flag}: until {ours['until']} is not after since {ours['since']}")
    url = store + ("?" + "&".join(rest) if rest else "")
    return TrafficSpec(url, ours.get("tag"), ours.get("model"), since, until, shown_spec(spec))


def shown_spec(spec: str) -> str:
    """The spec for messages and reports: the store's password hidden."""
    store, sep, query = spec.partition("?")
    return shown(store) + sep + query


@dataclass
class TrafficWorkload:
    """Workload fields measured from a window of calls, each with its provenance, plus what the traffic paid."""

    spec: TrafficSpec
    calls: int
    window: dict[str, Any]
    fields: dict[str, Any]  # Workload fields (None where the traffic cannot tell)
    provenance: dict[str, str]  # field -> "measured from N captured calls, D1–D2 …"
    models: dict[str, int]  # API model -> calls
    paid: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def section(self) -> dict[str, Any]:
        """The `traffic` section of the breakeven report."""
        return {
            "spec": self.spec.text,
            "store": shown(self.spec.store),
            "filters": {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in self.spec.filters().items()},
            "calls": self.calls,
            "window": self.window,
            "models": self.models,
            "measured": {k: v for k, v in self.fields.items() if k in self.provenance},
            "provenance": self.provenance,
            "paid": self.paid,
            "warnings": self.warnings,
        }


def _when(iso: str | None) -> str:
    return "?" if iso is None else dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def select(store: Store, spec: TrafficSpec) -> list[Call]:
    """The calls of the spec's window; none is one error line that says why (naming the tags or models there)."""
    calls = store.query(**spec.filters())
    if calls:
        return calls
    total = store.count()
    if not total:
        raise OfframpError(f"--traffic {spec.text}: the store holds no calls")
    for key in ("tag", "model"):
        wanted = getattr(spec, key)
        if wanted is not None and not store.count(**{key: wanted}):
            there = ", ".join(str(v) for v in store.distinct(key) if v is not None) or "none"
            raise OfframpError(f"--traffic {spec.text}: no call has {key} {wanted!r}; {key}s in the store: {there}")
    raise OfframpError(f"--traffic {spec.text}: no calls in that window (the store has {total:,} calls)")


def _cached_share(calls: list[Call]) -> tuple[float | None, int]:
    known = [c for c in calls if c.prompt_tokens and c.cached_tokens is not None]
    prompt = sum(c.prompt_tokens for c in known)  # type: ignore[misc]
    return (sum(c.cached_tokens for c in known) / prompt if prompt else None), len(known)  # type: ignore[misc]


def _token_fields(calls: list[Call], tok: dict[str, Any], label: str) -> tuple[dict[str, Any], dict[str, str]]:
    fields: dict[str, Any] = {}
    why: dict[str, str] = {}
    inp, out, reasoning = tok["input"], tok["output"], tok["reasoning"]
    if inp["n"]:
        fields["input_tokens"] = fields["api_input_tokens"] = max(inp["mean"], 1.0)
        why["input_tokens"] = why["api_input_tokens"] = (
            f"measured from {inp['n']:,} captured calls{label}: mean prompt_tokens (the API's own count)"
        )
    r_mean = reasoning["mean"] if reasoning["n"] else 0.0
    if out["n"]:  # completion_tokens includes the reasoning tokens: the visible answer is the rest
        fields["output_tokens"] = max(out["mean"] - r_mean, 1.0)
        why["output_tokens"] = f"measured from {out['n']:,} captured calls{label}: mean completion_tokens"
        if reasoning["n"]:
            why["output_tokens"] += " less mean reasoning_tokens"
    if reasoning["n"]:
        fields["reasoning_tokens"] = r_mean
        why["reasoning_tokens"] = f"measured from {reasoning['n']:,} captured calls{label}: mean reasoning_tokens"
    share, n = _cached_share(calls)
    if share is not None:
        fields["cached_input_share"] = share
        why["cached_input_share"] = f"measured from {n:,} captured calls{label}: cached_tokens / prompt_tokens"
    return fields, why


def _rate_fields(rates: dict[str, Any], window: dict, label: str) -> tuple[dict[str, Any], dict[str, str]]:
    n = rates["timed_calls"]
    if not n or not window["hours"]:
        return {}, {}
    hours = f"{window['hours']:.3g} h window"
    return (
        {"requests_per_month": rates["requests_per_month"], "peak_to_average": max(rates["peak_to_average"], 1.0)},
        {
            "requests_per_month": f"measured from {n:,} captured calls{label}: calls per hour × 730 ({hours})",
            "peak_to_average": f"measured from {n:,} captured calls{label}: busiest UTC hour / mean hour ({hours})",
        },
    )


def _warnings(calls: list[Call], rates: dict, window: dict) -> list[str]:
    found = []
    hours = window["hours"]
    if rates["untimed_calls"]:
        found.append(
            f"{rates['untimed_calls']:,} of {len(calls):,} calls have only their import time: left out of the "
            "volume and peak-to-average"
        )
    if hours and hours < SHORT_WINDOW_H:
        found.append(
            f"the window is {hours * 60:.0f} minutes: requests per month are extrapolated from under an hour "
            "of traffic; pass --requests-per-month or widen the window"
        )
    elif hours and hours < DAY_H:
        found.append(
            f"the window is {hours:.1f} h, under a day: the peak-to-average has not seen a daily cycle; "
            "pass --peak-to-average or widen the window"
        )
    failed = sum(1 for c in calls if (c.status is not None and not 200 <= c.status < 300) or c.error)
    if failed:
        found.append(f"{failed:,} of the calls failed upstream; they count in the volume, not in the spend")
    return found


def _paid(spend: dict[str, Any]) -> dict[str, Any]:
    priced = spend["priced_calls"]
    return {
        "in_window_usd": spend["measured_usd"],
        "priced_calls": priced,
        "unpriced_calls": spend["unpriced_calls"],
        "unpriced_reasons": spend["unpriced_reasons"],
        "per_request_usd": spend["measured_usd"] / priced if priced else None,
        "per_month_usd": spend["per_month_usd"],
        "priced_as": spend["priced_as"],
        "source": "the list-price cost stored with each call when it was recorded (what the traffic paid at "
        "list price; an invoice's discounts are not known here)",
    }


def measure(store: Store, spec: TrafficSpec) -> TrafficWorkload:
    """The workload of the spec's calls, each figure labelled with the calls and window it comes from."""
    from offramp.traffic import report as rep

    calls = select(store, spec)
    window = rep.window_of(calls, spec.since, spec.until)
    rates = rep.rates(calls, window)
    label = f", {_when(window['start'])}–{_when(window['end'])}" if window["start"] else ""
    fields, why = _rate_fields(rates, window, label)
    token_fields, token_why = _token_fields(calls, rep.tokens(calls), label)
    fields.update(token_fields)
    why.update(token_why)
    models = Counter(c.model or "(no model)" for c in calls)
    return TrafficWorkload(
        spec=spec,
        calls=len(calls),
        window=window,
        fields=fields,
        provenance=why,
        models=dict(models.most_common()),
        paid=_paid(rep.spend(calls, window)),
        warnings=_warnings(calls, rates, window),
    )


def load(spec_text: str) -> TrafficWorkload:
    """Parse the spec, open its store (never creating one) and measure the workload."""
    from offramp.traffic.store import open_store

    spec = parse_spec(spec_text)
    with open_store(spec.store, create=False) as store:
        return measure(store, spec)


def api_model(traffic: TrafficWorkload, catalogue: Any) -> str:
    """The catalogue name of the one API model the traffic used; several, none or an unknown one is an error."""
    from offramp.traffic.pricing import catalogue_entry

    models = [m for m in traffic.models if m != "(no model)"]
    if len(models) != 1:
        listed = ", ".join(f"{m} ({n:,} calls)" for m, n in traffic.models.items())
        pick = "pick one with ?model=… or name the API with --api" if models else "name the API with --api"
        raise OfframpError(f"--traffic {traffic.spec.text}: the calls are of {listed}: {pick}")
    found = catalogue_entry(catalogue, models[0])
    if found is None:
        raise OfframpError(
            f"--traffic {traffic.spec.text}: model {models[0]} is not in the price catalogue; name the API to "
            "price it as with --api (or add it with --prices)"
        )
    return found[0]


def _replay_item(call: Call) -> dict[str, Any] | None:
    """One captured request as load: its messages (or completion prompt) and its output cap."""
    req = call.request
    messages, prompt = req.get("messages"), req.get("prompt")
    if isinstance(messages, list) and messages:
        item: dict[str, Any] = {"messages": messages}
    elif isinstance(prompt, str) and prompt:
        item = {"prompt": prompt}
    else:
        return None
    cap = req.get("max_completion_tokens") or req.get("max_tokens")
    if isinstance(cap, int) and cap > 0:
        item["max_tokens"], item["max_tokens_from"] = cap, "request"
    elif call.completion_tokens:
        item["max_tokens"], item["max_tokens_from"] = call.completion_tokens, "observed"
    else:
        item["max_tokens"], item["max_tokens_from"] = None, "default"
    return item


def replay_prompts(spec_text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The captured requests of the spec's window, oldest first, as bench load; and where they come from.

    Each: {"messages": [...]} as the client sent them (or {"prompt": str} for /v1/completions), and "max_tokens":
    the request's own max_tokens / max_completion_tokens, else the completion length the API returned, else
    None (the bench's --output-len)."""
    from offramp.traffic.report import window_of
    from offramp.traffic.store import open_store

    spec = parse_spec(spec_text)
    with open_store(spec.store, create=False) as store:
        calls = select(store, spec)
    items = [i for i in map(_replay_item, calls) if i is not None]
    if not items:
        raise OfframpError(f"--traffic {spec.text}: none of the {len(calls):,} calls carries messages or a prompt")
    window = window_of(calls, spec.since, spec.until)
    caps = Counter(i["max_tokens_from"] for i in items)
    return items, {
        "source": spec.text,
        "calls": len(calls),
        "replayed": len(items),
        "skipped_without_prompt": len(calls) - len(items),
        "window": window,
        "max_tokens_from": dict(caps),
        "description": f"{len(items):,} captured requests of {spec.text}, {_when(window['start'])}–"
        f"{_when(window['end'])}, as the client sent them (max tokens: the request's, else the observed answer "
        "length)",
    }
