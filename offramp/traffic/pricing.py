"""What one recorded call cost at list price: the cost model's own per-request arithmetic on the call's usage."""

from __future__ import annotations

import re
from typing import Any

from offramp.errors import OfframpError

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")  # gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022


def catalogue_entry(catalogue: Any, model: str) -> tuple[str, Any] | None:
    """(catalogue name, ApiPrice) of a model as an API reports it: exact, normalised, or without its date suffix."""
    for name in (model, _DATED.sub("", model)):
        try:
            entry = catalogue.api_price(name, allow_retired=True)  # the call was made: price it at its list price
        except OfframpError:
            continue
        return name, entry
    return None


def price_call(call: Any, catalogue: Any) -> tuple[float | None, str]:
    """(cost in USD, how it was priced) — or (None, why not): a failed call, no model, an unknown model, no usage.

    OpenAI usage semantics: prompt_tokens includes cached_tokens and completion_tokens includes reasoning_tokens,
    so the reasoning tokens are billed inside completion_tokens here, not on top. A Batch API call pays the batch
    price. Cache writes are not billed separately (OpenAI-format usage reports none)."""
    from offramp.cost.model import _api_option
    from offramp.cost.workload import Workload

    if (call.status is not None and not 200 <= call.status < 300) or call.error:
        return None, "failed call (not billed)"
    if not call.model:
        return None, "no model in the record"
    found = catalogue_entry(catalogue, call.model)
    if found is None:
        return None, f"model {call.model} is not in the price catalogue"
    if call.prompt_tokens is None or call.completion_tokens is None:
        return None, "no usage in the record (tokens unknown)"
    name, price = found
    cached = min(call.cached_tokens or 0, call.prompt_tokens)
    # The Workload wants positive means; an empty prompt or answer costs nothing either way.
    w = Workload(
        requests_per_month=1,
        input_tokens=max(call.prompt_tokens, 1e-9),
        output_tokens=max(call.completion_tokens, 1e-9),
        cached_input_share=cached / call.prompt_tokens if call.prompt_tokens else 0.0,
        cache_write_share=0.0,
        reasoning_tokens=0.0,
    )
    batch = call.source == "openai-batch"
    cost = _api_option(w, price, batch=batch).per_request_usd
    retired = f", retired {price.retired}" if price.retired else ""
    return cost, f"{name} list price {price.date}{' batch' if batch else ''} ({price.source}{retired})"
