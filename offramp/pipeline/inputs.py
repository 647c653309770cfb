"""What a pipeline stage reads, declared once: the fields it may read are the fields its cache key holds.

A stage declares the config fields it reads as dotted paths (`"task"`, `"cost.host"`) and gets a view of the config
in which only those resolve; reading any other field raises `UndeclaredInput`. What it reads from outside the config
(a price resolved from the catalogue, a baseline chosen by whether a key is set) is resolved once, when the stage is
built, and handed to it as `derived`. Its key is the hash of both, so a stage cannot depend on an input its key
leaves out. A value that names an existing file counts by its content, a directory by its files' sizes and times:
editing a CSV or a recipe YAML in place re-runs what reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class UndeclaredInput(AttributeError):
    pass


class ConfigView:
    """Attribute access to a pydantic config, limited to the declared dotted paths and what lies under them."""

    def __init__(self, config: BaseModel, reads: Iterable[str], prefix: str = "") -> None:
        self._config = config
        self._reads = frozenset(reads)
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = self._prefix + name
        value = getattr(self._config, name)
        if path in self._reads:
            return value
        if any(r.startswith(path + ".") for r in self._reads):
            return ConfigView(value, self._reads, path + ".")
        raise UndeclaredInput(f"a stage read config field {path!r} that it does not declare (its cache key omits it)")

    def values(self) -> dict[str, Any]:
        """The declared fields' values, as the cache key sees them."""
        out = {}
        for path in sorted(self._reads):
            value: Any = self._config
            for part in path.split("."):
                value = getattr(value, part)
            out[path] = fingerprint(value)
        return out


def fingerprint(value: Any) -> Any:
    """`value` as JSON for a cache key, with each existing file path replaced by its content hash."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {k: fingerprint(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    if isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        try:
            if path.is_file():
                return {"path": value, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                stats = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
                return {"path": value, "files": hashlib.sha256(repr(stats).encode()).hexdigest()}
        except OSError:
            pass
    return value


@dataclass(frozen=True)
class Inputs:
    """Everything a stage reads besides its upstream artifacts."""

    config: ConfigView
    derived: dict[str, Any] = field(default_factory=dict)

    def key_material(self) -> dict[str, Any]:
        """The declared config fields by path and the derived inputs by name, in one mapping."""
        config = self.config.values()
        if clash := config.keys() & self.derived.keys():
            raise ValueError(f"derived input named like a config field: {', '.join(sorted(clash))}")
        return {**config, **fingerprint(self.derived)}
