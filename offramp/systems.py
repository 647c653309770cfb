"""`--system NAME=SPEC`: what a system under evaluation is.

SPEC is one of
- a local checkpoint: a store name or a path, optionally `+adapter=DIR` (a peft adapter on top) and
  `+answers=constrained|free` (a classification task's answer modes; default both);
- an OpenAI-compatible endpoint: `openai:MODEL`, `anthropic:MODEL` (its OpenAI-compatible API), or a server URL
  `http://host:port/v1` (vLLM; `+model=NAME` picks the served model, `+key_env=VAR` names its key's env var,
  `+answers=constrained|free` asks a classification task for one answer mode only);
- a cited published score: `cited:banking77/gpt-4-1shot` (see `offramp.cited`).

Keys come only from environment variables; a spec never holds a key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from offramp.errors import OfframpError
from offramp.providers import PROVIDERS
from offramp.store import model_dir, require_causal_lm

_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")


@dataclass(frozen=True)
class LocalSystem:
    name: str
    spec: str
    model: str  # store name or path, resolved at run time
    adapter: str | None = None
    answers: str = "both"  # both | constrained | free, as for an endpoint


@dataclass(frozen=True)
class EndpointSystem:
    name: str
    spec: str
    provider: str  # openai / anthropic / vllm
    base_url: str  # ends in /v1
    model: str | None  # None: ask the server (vLLM serves one model)
    key_env: str | None
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    answers: str = "both"  # both | constrained | free: which answer modes a classification task asks for

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env) if self.key_env else None

    @property
    def answers_cacheable(self) -> bool:
        """Only a paid API's answers are cached. A URL endpoint (a vLLM server offramp or the user runs) answers
        with whatever it serves now: retrained and served again under the same name on the same port, its old
        answers would come back from a cache keyed by URL + payload as if measured anew."""
        return self.provider in PROVIDERS


@dataclass(frozen=True)
class CitedSystem:
    name: str
    spec: str
    key: str


System = LocalSystem | EndpointSystem | CitedSystem


def _options(parts: list[str], allowed: set[str], spec: str) -> dict[str, str]:
    opts = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed or not value:
            raise OfframpError(
                f"system spec {spec!r}: bad option {'+' + part!r}; allowed: {', '.join(sorted(allowed))}"
            )
        opts[key] = value
    return opts


def _answers(opts: dict[str, str], spec: str) -> str:
    answers = opts.get("answers", "both")
    if answers not in ("both", "constrained", "free"):
        raise OfframpError(f"system spec {spec!r}: +answers must be both, constrained or free, got {answers!r}")
    return answers


def parse_system(arg: str) -> System:
    name, sep, spec = arg.partition("=")
    if not sep or not name or not spec:
        raise OfframpError(
            f"--system {arg!r}: expected NAME=SPEC, e.g. candidate=smollm2-135m-instruct+adapter=out/lora"
        )
    if not _NAME.match(name):
        raise OfframpError(f"--system {arg!r}: the name must be letters, digits, '.', '_' or '-'")
    if spec.startswith("cited:"):
        from offramp.cited import lookup

        lookup(spec.removeprefix("cited:"))  # fail now on an unknown key
        return CitedSystem(name, spec, spec.removeprefix("cited:"))
    head, *rest = spec.split("+")
    if head.startswith(("http://", "https://")):
        opts = _options(rest, {"model", "key_env", "answers"}, spec)
        base = head.rstrip("/")
        if not base.endswith("/v1"):
            raise OfframpError(f"system spec {spec!r}: an endpoint URL must end in /v1 (e.g. http://127.0.0.1:8000/v1)")
        answers = _answers(opts, spec)
        return EndpointSystem(name, spec, "vllm", base, opts.get("model"), opts.get("key_env"), answers=answers)
    provider, colon, model = head.partition(":")
    if colon and provider in PROVIDERS:
        if not model:
            raise OfframpError(f"system spec {spec!r}: name the model, e.g. {provider}:gpt-4o-mini")
        _options(rest, set(), spec)
        known = PROVIDERS[provider]
        return EndpointSystem(name, spec, provider, known.base_url(), model, known.key_env)
    if colon and not Path(head).exists() and re.match(r"^[a-z]+$", provider):
        raise OfframpError(
            f"system spec {spec!r}: unknown provider {provider!r}; use {', '.join(PROVIDERS)}, cited:…, "
            "an http://host:port/v1 URL, or a local model"
        )
    opts = _options(rest, {"adapter", "answers"}, spec)
    if "adapter" in opts and not Path(opts["adapter"]).is_dir():
        raise OfframpError(f"system spec {spec!r}: adapter {opts['adapter']} is not a directory")
    require_causal_lm(Path(head) if Path(head).is_dir() else model_dir(head), f"system {name!r} (lm-eval's causal LM)")
    return LocalSystem(name, spec, head, opts.get("adapter"), answers=_answers(opts, spec))


def check_key(system: EndpointSystem) -> None:
    """A paid API needs its key in its env var; say which one when it is missing."""
    if system.key_env and not os.environ.get(system.key_env):
        raise OfframpError(f"system {system.name!r} ({system.spec}) needs an API key: set the env var {system.key_env}")


def parse_systems(args: list[str]) -> list[System]:
    if not args:
        raise OfframpError("give at least one --system NAME=SPEC")
    systems = [parse_system(a) for a in args]
    names = [s.name for s in systems]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise OfframpError(f"system names must be unique; repeated: {', '.join(sorted(dup))}")
    for s in systems:
        if isinstance(s, EndpointSystem):
            check_key(s)
    return systems
