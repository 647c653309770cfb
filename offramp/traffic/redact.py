"""`offramp capture --redact`: mask e-mail addresses, phone numbers and payment card numbers in what is STORED.

What is forwarded to the API and returned to the client is never changed; only the stored request, response,
answer and shadow answer are masked, with `[email]`, `[phone]`, `[card]`.

What it catches:
- e-mail addresses (`local@domain.tld`);
- card numbers: 13 to 19 digits, optionally grouped by spaces or dashes, that pass the Luhn check;
- phone numbers: 9 to 15 digits (E.164's maximum), optionally with a leading `+` and spaces, dashes, dots or
  brackets between them. Other digit runs of that shape (order numbers, long IDs) are masked too.

What it does NOT catch: names, postal addresses, dates of birth, IDs written in free form (passport, national
insurance, account numbers with letters), phone numbers of fewer than 9 digits or spelt out, card numbers that
fail the Luhn check or are split across messages, anything in images or tool-call arguments encoded other than as
text. It is pattern matching, not PII detection: treat a redacted store as still sensitive.
"""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])(?<!\d[\s().-])\+?\(?\d(?:[\s().-]{0,2}\d){8,14}(?![\s().-]?\d)(?!\w)")
# JSON fields that are protocol, not text: never masked (a model name or an id is not personal data).
PROTOCOL_KEYS = frozenset({"model", "id", "object", "role", "finish_reason", "system_fingerprint", "type"})


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    return "[card]" if luhn_ok(digits) else m.group()


def redact_text(text: str) -> str:
    """The text with e-mail addresses, Luhn-valid card numbers and phone-shaped digit runs masked."""
    text = EMAIL.sub("[email]", text)
    text = CARD.sub(_card, text)
    return PHONE.sub("[phone]", text)


def redact(value: Any, key: str | None = None) -> Any:
    """Every string in a JSON value masked by `redact_text`, except protocol fields (PROTOCOL_KEYS)."""
    if isinstance(value, str):
        return value if key in PROTOCOL_KEYS else redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    return value
