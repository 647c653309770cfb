"""The dated, sourced price catalogue (offramp/prices.yaml) and the user's own prices merged over it."""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from offramp.errors import OfframpError

PRICING = ("on_demand", "spot", "reserved_1y")
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


def _iso(v: Any) -> str:
    v = v.isoformat() if isinstance(v, dt.date) else str(v)
    if not _DATE.match(v):
        raise ValueError(f"date {v!r} is not YYYY-MM or YYYY-MM-DD")
    return v


class _Priced(BaseModel):
    model_config = ConfigDict(extra="allow")
    date: str  # when the price was listed: YYYY-MM or YYYY-MM-DD
    source: str  # the page (or contract) it was read from
    verified: bool = False
    note: str | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> str:
        return _iso(v)


class ApiPrice(_Priced):
    """An API model's list price in USD per 1M tokens."""

    vendor: str = ""
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)
    cached_input_per_1m: float | None = Field(default=None, ge=0)  # None: the vendor has no prompt-cache price
    cache_min_prompt_tokens: int | None = Field(default=None, ge=0)  # shorter prompts get no cache discount
    cache_write_per_1m: float | None = Field(default=None, ge=0)  # None: cache writes cost the input price
    batch_discount: float = Field(default=0.0, ge=0, lt=1)  # share taken off by the batch API
    batch_applies_to_cached: bool = False
    reasoning: bool = False  # hidden reasoning tokens are billed as output tokens
    retired: str | None = None  # when the vendor retired the model: YYYY-MM or YYYY-MM-DD

    @field_validator("retired", mode="before")
    @classmethod
    def _iso_retired(cls, v: Any) -> str | None:
        return None if v is None else _iso(v)


class HostPrice(_Priced):
    """A host's list price in USD per hour."""

    kind: Literal["gpu", "cpu"]
    accelerator: str = ""
    vcpus: int | None = None
    memory_gib: float | None = None
    region: str = ""
    on_demand_per_hour: float = Field(gt=0)
    spot_per_hour: float | None = Field(default=None, gt=0)
    reserved_1y_per_hour: float | None = Field(default=None, gt=0)
    sold_in_multiples_of: int = Field(default=1, ge=1)  # e.g. 8: a per-GPU price of an 8-GPU-only instance

    def per_hour(self, pricing: str) -> float:
        if pricing not in PRICING:
            raise OfframpError(f"unknown pricing {pricing!r}; use one of {', '.join(PRICING)}")
        value = getattr(self, f"{pricing}_per_hour")
        if value is None:
            raise OfframpError(f"no {pricing} price known for this host; use on_demand or give it in --prices")
        return value


class Catalogue(BaseModel):
    api: dict[str, ApiPrice]
    hosts: dict[str, HostPrice]
    sources: list[str]  # the files merged into it, catalogue first

    def api_price(self, name: str, *, allow_retired: bool = False) -> ApiPrice:
        """A retired model is refused unless `allow_retired`: its list price no longer buys anything."""
        key = _key(self.api, name, "API model")
        entry = self.api[key]
        if entry.retired and not allow_retired:
            raise OfframpError(
                f"{key} was retired on {entry.retired} ({entry.source}): "
                "pick a current model, or pass --allow-retired to price it anyway"
            )
        return entry

    def host_price(self, name: str) -> HostPrice:
        return _lookup(self.hosts, name, "host")


def normalise(name: str) -> str:
    """`aws-c7i.xlarge`, `AWS_c7i_xlarge` and `aws-c7i-xlarge` name the same entry."""
    return re.sub(r"[._\s]+", "-", name.strip().lower())


def _key(table: dict, name: str, what: str) -> str:
    by_norm = {normalise(k): k for k in table}
    key = name if name in table else by_norm.get(normalise(name))
    if key is None:
        raise OfframpError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))} (add your own with --prices)")
    return key


def _lookup(table: dict, name: str, what: str):
    return table[_key(table, name, what)]


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise OfframpError(f"{path}: cannot read price file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise OfframpError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not ({"api", "hosts"} & data.keys()):
        raise OfframpError(f"{path}: a price file needs an 'api' and/or 'hosts' mapping")
    return data


def _merge(base: dict, user: dict, path: Path) -> None:
    for section in ("api", "hosts"):
        entries = user.get(section) or {}
        if not isinstance(entries, dict):
            raise OfframpError(f"{path}: '{section}' must be a mapping of name -> entry")
        table = base.setdefault(section, {})
        by_norm = {normalise(k): k for k in table}
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise OfframpError(f"{path}: {section}.{name} must be a mapping")
            missing = [k for k in ("date", "source") if k not in entry]
            if missing:
                raise OfframpError(f"{path}: {section}.{name}: a user price needs its own {' and '.join(missing)}")
            key = by_norm.get(normalise(str(name)), str(name))
            table[key] = {**table.get(key, {}), "verified": False, **entry}


def _validate(data: dict, sources: list[str]) -> Catalogue:
    try:
        return Catalogue(api=data.get("api") or {}, hosts=data.get("hosts") or {}, sources=sources)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OfframpError(f"price catalogue ({' + '.join(sources)}): {where}: {first['msg']}") from None


def builtin_path() -> Path:
    return Path(str(resources.files("offramp") / "prices.yaml"))


def load_catalogue(user_files: list[Path] | None = None) -> Catalogue:
    """The shipped catalogue with each user file merged over it in order (later files win)."""
    base = _read_yaml(builtin_path())
    sources = [str(builtin_path())]
    for path in user_files or []:
        _merge(base, _read_yaml(path), Path(path))
        sources.append(str(path))
    return _validate(base, sources)


def adhoc_host(price_per_hour: float, *, kind: Literal["gpu", "cpu"] = "cpu") -> HostPrice:
    """A host price given on the command line: its provenance is the user's flag, dated today."""
    if not price_per_hour > 0:
        raise OfframpError(f"--host-price-per-hour must be > 0, got {price_per_hour}")
    return HostPrice(
        kind=kind,
        on_demand_per_hour=price_per_hour,
        date=dt.date.today().isoformat(),
        source="user flag --host-price-per-hour",
        accelerator="as stated by the user",
    )
