"""The paid APIs offramp knows by name (`openai:MODEL`, `anthropic:MODEL`): where each answers and where its key is."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    name: str
    default_url: str  # OpenAI-compatible base URL, ends in /v1
    url_env: str  # env var that overrides the base URL (a proxy, a regional endpoint)
    key_env: str  # env var holding the API key

    def base_url(self) -> str:
        return os.environ.get(self.url_env, self.default_url).rstrip("/")


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", "https://api.openai.com/v1", "OPENAI_BASE_URL", "OPENAI_API_KEY"),
        # Anthropic's OpenAI-compatible API
        Provider("anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
    )
}
KEY_ENV: dict[str, str] = {name: p.key_env for name, p in PROVIDERS.items()}
