"""Self-hosted $ per 1M tokens from a bench report's SLO-meeting load point and an hourly host price.

The host price comes from the user (`--host-price-per-hour`) or, for a named host, from the price catalogue
(`offramp.cost`, built separately); `host_price()` is the one seam where that lookup plugs in.
"""

from __future__ import annotations

from typing import Any

from offramp.errors import OfframpError

SPLIT_RULES = "measured, or ratio:K (an output token costs K input tokens)"


def host_price(host: str | None, price_per_hour: float | None) -> dict[str, Any] | None:
    """The hourly price of the host with its provenance, or None when neither is given."""
    if price_per_hour is not None:
        if price_per_hour <= 0:
            raise OfframpError(f"--host-price-per-hour must be positive, got {price_per_hour}")
        return {
            "value": price_per_hour,
            "unit": "USD/hour",
            "source": "user",
            "reference": "--host-price-per-hour" + (f" (host {host})" if host else ""),
            "host": host,
        }
    if host is None:
        return None
    try:
        from offramp.cost import catalogue_host_price  # type: ignore[attr-defined]
    except ImportError:
        raise OfframpError(
            f"no price catalogue in this offramp build to look host {host!r} up; pass --host-price-per-hour"
        ) from None
    # Expected: a list_price()-style dict {value, unit: "USD/hour", source: "list_price", date, reference}.
    return {**catalogue_host_price(host), "host": host}


def parse_split(rule: str) -> tuple[str, float | None]:
    if rule == "measured":
        return "measured", None
    if rule.startswith("ratio:"):
        try:
            k = float(rule.split(":", 1)[1])
        except ValueError:
            k = -1.0
        if k > 0:
            return "ratio", k
    raise OfframpError(f"unknown cost split rule {rule!r}; use {SPLIT_RULES}")


def input_cost_share(point: dict, rule: str) -> tuple[float, str]:
    """Share of the host's time charged to input tokens, and the rule stated in words: the break-even cost model's
    rule (offramp.cost.model.capacity_from_point), so `bench` and `breakeven` price a load point alike."""
    from offramp.artifacts import LoadPoint
    from offramp.cost.model import capacity_from_point

    _, output_weight = parse_split(rule)
    capacity = capacity_from_point(LoadPoint.model_validate(point), output_weight)
    return capacity.input_time_share, capacity.rule


def cost_per_million(point: dict, price: dict, *, utilisation: float, split: str = "measured") -> dict[str, Any]:
    """$ per 1M input / output / total tokens at `point`'s throughput: fully-utilised floor and at `utilisation`."""
    if not 0 < utilisation <= 1:
        raise OfframpError(f"utilisation must be in (0, 1], got {utilisation}")
    tin, tout = point["input_tokens_per_s"], point["output_tokens_per_s"]
    from offramp.artifacts import LoadPoint
    from offramp.cost.model import generates_nothing

    classifier = generates_nothing(LoadPoint.model_validate(point))  # a pooling load: input pays for everything
    if tin <= 0 or (tout <= 0 and not classifier) or point.get("requests_per_s", 0) <= 0:
        raise OfframpError("the sustainable load point has no input or output throughput to price")
    per_s = price["value"] / 3600.0
    share, rule = input_cost_share(point, split)
    floor = {
        "input": per_s * share / tin * 1e6,
        "output": per_s * (1 - share) / tout * 1e6 if tout > 0 else None,
        "blended_total": per_s / (tin + tout) * 1e6,
        "per_million_requests": per_s / point["requests_per_s"] * 1e6,
    }
    return {
        "unit": "USD per 1M tokens (per_million_requests: USD per 1M requests of this load's mix)",
        "host_price": price,
        "throughput": {
            "input_tokens_per_s": tin,
            "output_tokens_per_s": tout,
            "at_concurrency": point.get("concurrency"),
            "source": "measured",
        },
        "split_rule": rule,
        "input_cost_share": share,
        "fully_utilised_floor": {k: _round(v) for k, v in floor.items()},
        "utilisation": utilisation,
        "at_utilisation": {k: _round(v / utilisation if v is not None else None) for k, v in floor.items()},
        "note": (
            "floor: the host serves the SLO-meeting load every second it is paid for; at_utilisation: the host is "
            f"paid for 100 % of the time but busy {utilisation:.0%} of it (traffic is not flat), so cost / utilisation"
        ),
    }


def _round(v: float | None) -> float | None:
    # Significant figures, not decimals: a busy host's $ per 1M tokens can be $0.0049, where 6 decimals keep only 4.
    return float(f"{v:.6g}") if v is not None else None
