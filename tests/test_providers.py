"""offramp/providers.py: the one table of named APIs, as eval (`--system openai:M`) and the cascade read it."""

from __future__ import annotations

import dataclasses

import pytest

from offramp.errors import OfframpError
from offramp.providers import KEY_ENV, PROVIDERS
from offramp.serve.cascade import Fallback
from offramp.systems import parse_system


def test_the_table():
    assert KEY_ENV == {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
    assert {n: (p.default_url, p.url_env) for n, p in PROVIDERS.items()} == {
        "openai": ("https://api.openai.com/v1", "OPENAI_BASE_URL"),
        "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_BASE_URL"),
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROVIDERS["openai"].key_env = "OTHER"  # type: ignore[misc]


def test_base_url_is_overridden_by_its_env_var(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert PROVIDERS["anthropic"].base_url() == "https://api.anthropic.com/v1"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/v1/")
    assert PROVIDERS["anthropic"].base_url() == "http://127.0.0.1:9/v1"
    system = parse_system("claude=anthropic:claude-haiku-4-5")
    assert (system.base_url, system.key_env) == ("http://127.0.0.1:9/v1", "ANTHROPIC_API_KEY")


def test_cascade_fallback_takes_the_url_and_key_env_from_the_table(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    want = Fallback("https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY")
    assert Fallback.parse("openai:gpt-4o-mini") == want
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(OfframpError, match="environment variable ANTHROPIC_API_KEY"):
        Fallback.parse("anthropic:claude-haiku-4-5")
