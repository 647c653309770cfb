"""The traffic store: one row per LLM API call, in SQLite (a file) or PostgreSQL (a URL).

The schema is defined once, below, with SQLAlchemy 2 **Core** (tables, not ORM classes). Why Core: the store is an
append-mostly log plus aggregate reads. Core gives explicit, short transactions (`engine.begin()`), the
dialects' `INSERT … ON CONFLICT DO NOTHING` for the dedup key, and no session or identity map holding rows between
calls, which matters to a proxy that writes one call per request from many tasks. `Call` is a plain dataclass.

Durability.
- SQLite: `journal_mode=WAL` with `synchronous=FULL`. In WAL mode FULL fsyncs the WAL at every commit, so a
  transaction that `record()` returned from survives a power loss or OS crash, not only a crash of the process
  (WAL + NORMAL would survive a process crash but could lose the last commits on power loss; the file stays
  consistent either way). WAL lets `offramp traffic report` read while a proxy writes; `busy_timeout` makes a
  second writer wait instead of failing.
- PostgreSQL: the server's `synchronous_commit` (default `on`) decides; with it a commit returns only once the WAL is
  flushed on the server. offramp does not lower it.

Dedup key: sha256 of the canonical JSON (sorted keys, no whitespace) of {request, response (or the answer text
where there is no response body), custom_id, time (only when it came from the record itself, not the import
time), n}, where n counts earlier identical calls in the same import (two identical lines of one file are two
calls; the same file imported again adds nothing). `source` is stored, not hashed: the same call read through
two different importers would be structured differently anyway.

Tokens follow OpenAI's usage: `prompt_tokens` includes `cached_tokens`, `completion_tokens` includes
`reasoning_tokens` (the details are subsets, not additions). NULL means unknown, never zero.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError

from offramp.errors import OfframpError

SCHEMA_VERSION = 1
SOURCES = ("proxy", "openai-batch", "sdk-log", "chat-jsonl")
# Request fields that name the caller, not the question: a response cache would ignore them.
CALLER_FIELDS = ("user", "metadata", "store", "stream", "stream_options")
TOKEN_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (no time zones) and PostgreSQL alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value}: the store takes UTC-aware times")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
metadata = sa.MetaData()

meta_table = sa.Table(
    "offramp_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

calls_table = sa.Table(
    "offramp_calls",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
    sa.Column("source", sa.String(32), nullable=False),  # one of SOURCES
    sa.Column("custom_id", sa.Text),  # the Batch API's custom_id, a log's own id
    sa.Column("time", UTCDateTime, nullable=False),  # when the call was made, UTC
    sa.Column("time_source", sa.String(32), nullable=False),  # proxy / response.created / record / import
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("latency_ms", sa.Float),  # NULL for imports: logs rarely carry it
    sa.Column("status", sa.Integer),  # HTTP status of the upstream answer; NULL where unknown
    sa.Column("error", sa.Text),
    sa.Column("provider", sa.String(64)),
    sa.Column("upstream", sa.Text),  # URL or endpoint path
    sa.Column("model", sa.String(200)),
    sa.Column("tag", sa.String(200)),  # X-Offramp-Tag, else metadata.tag, else user
    sa.Column("request", sa.JSON, nullable=False),  # the request body: model, messages, params
    sa.Column("request_hash", sa.String(64), nullable=False),  # sha256 of the body without CALLER_FIELDS
    sa.Column("response", sa.JSON),  # the response body, NULL where the log has only the answer
    sa.Column("answer", sa.Text),  # the answer text (or the tool calls as JSON)
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("cached_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("reasoning_tokens", sa.Integer),
    sa.Column("cost_usd", sa.Float),  # list price at recording time; NULL with cost_note saying why
    sa.Column("cost_note", sa.Text),
    sa.Column("shadow", sa.Text),  # the small model's answer to the same request (shadow mode), NULL until then
    *(sa.CheckConstraint(f"{c} >= 0", name=f"ck_offramp_calls_{c}") for c in TOKEN_COLUMNS),
    sa.Index("ix_offramp_calls_time", "time"),
    sa.Index("ix_offramp_calls_tag_time", "tag", "time"),
    sa.Index("ix_offramp_calls_model_time", "model", "time"),
)


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def request_hash(request: dict) -> str:
    """What a plain response cache keys on: the body without the fields that only name the caller."""
    return sha256({k: v for k, v in request.items() if k not in CALLER_FIELDS})


@dataclass
class Call:
    """One API call. `time` must be UTC-aware. Leave `dedup_key` / `cost_usd` None: `record` fills them."""

    request: dict
    time: dt.datetime
    source: str = "proxy"
    time_source: str = "proxy"
    response: dict | None = None
    answer: str | None = None
    model: str | None = None
    tag: str | None = None
    custom_id: str | None = None
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None
    provider: str | None = None
    upstream: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    cost_note: str | None = None
    shadow: str | None = None
    dedup_key: str | None = None
    request_hash: str | None = None
    recorded_at: dt.datetime | None = None
    id: int | None = None
    occurrence: int = field(default=0, repr=False)  # nth identical call in one import (part of the dedup key)

    def key(self) -> str:
        body = self.response if self.response is not None else self.answer
        when = None if self.time_source == "import" else self.time.astimezone(dt.UTC).isoformat()
        return sha256(
            {"request": self.request, "response": body, "custom_id": self.custom_id, "time": when, "n": self.occurrence}
        )

    def row(self) -> dict[str, Any]:
        skip = {"id", "occurrence"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


COLUMNS = [c.name for c in calls_table.columns]


def _call(row: sa.Row) -> Call:
    return Call(**{k: v for k, v in row._mapping.items()})


def normalise_url(url_or_path: str | Path) -> str:
    """A path is a SQLite file; `postgresql://` and `postgres://` mean psycopg 3 (`postgresql+psycopg://`)."""
    s = str(url_or_path)
    if "://" not in s:
        return str(sa.URL.create("sqlite", database=str(Path(s).expanduser())))
    scheme, rest = s.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return s


def shown(url_or_path: str | Path) -> str:
    """The store's name for messages: a path as given, a URL without its password."""
    s = str(url_or_path)
    if "://" not in s:
        return s
    try:
        return make_url(s).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", s)


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """An open traffic store. Every write is one committed transaction; reads see committed rows only."""

    def __init__(self, engine: Engine, name: str, catalogue: Any = None) -> None:
        self.engine = engine
        self.name = name
        self._catalogue = catalogue

    # --- writes --------------------------------------------------------------------------------------------
    def record(self, call: Call) -> bool:
        """Write one call in its own transaction; True if added, False if its dedup key was already there.
        Committed (and on SQLite fsynced) when this returns."""
        return self.record_many([call])[0] == 1

    def record_many(self, calls: Iterable[Call]) -> tuple[int, int]:
        """Write calls in ONE transaction (all or nothing); returns (added, already there)."""
        calls = list(calls)
        rows = [self._prepare(c) for c in calls]
        added = 0
        try:
            with self.engine.begin() as conn:
                insert = self._insert()
                for call, row in zip(calls, rows, strict=True):
                    new_id = conn.execute(insert, row).scalar_one_or_none()  # None: the dedup key was there
                    if new_id is not None:
                        call.id = new_id
                        added += 1
        except SQLAlchemyError as e:
            raise _store_error(self.name, e) from None
        return added, len(rows) - added

    def set_shadow(self, call_id: int, answer: str) -> bool:
        """Store the small model's answer beside a recorded call (shadow mode); False if no such call."""
        stmt = sa.update(calls_table).where(calls_table.c.id == call_id).values(shadow=answer)
        try:
            with self.engine.begin() as conn:
                return conn.execute(stmt).rowcount == 1
        except SQLAlchemyError as e:
            raise _store_error(self.name, e) from None

    def _insert(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # RETURNING id, not rowcount: drivers disagree on rowcount for an INSERT that also returns rows.
        return insert(calls_table).on_conflict_do_nothing(index_elements=["dedup_key"]).returning(calls_table.c.id)

    def _prepare(self, c: Call) -> dict[str, Any]:
        if c.time.tzinfo is None:
            raise OfframpError(f"call time {c.time} has no time zone: give UTC")
        if c.source not in SOURCES:
            raise OfframpError(f"unknown call source {c.source!r}; one of {', '.join(SOURCES)}")
        for what in ("request", "response"):
            try:
                json.dumps(getattr(c, what), allow_nan=False)
            except (TypeError, ValueError) as e:
                raise OfframpError(f"call {c.custom_id or c.time.isoformat()}: its {what} is not JSON ({e})") from None
        c.dedup_key = c.dedup_key or c.key()
        c.request_hash = c.request_hash or request_hash(c.request)
        c.recorded_at = c.recorded_at or dt.datetime.now(dt.UTC)
        if c.cost_usd is None and c.cost_note is None:
            from offramp.traffic.pricing import price_call

            c.cost_usd, c.cost_note = price_call(c, self.catalogue)
        return c.row()

    @property
    def catalogue(self) -> Any:
        if self._catalogue is None:
            from offramp.cost.prices import load_catalogue

            self._catalogue = load_catalogue()
        return self._catalogue

    # --- reads ---------------------------------------------------------------------------------------------
    def _where(
        self,
        tag: str | None = None,
        model: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Any]:
        t = calls_table.c
        conds = []
        if tag is not None:
            conds.append(t.tag == tag)
        if model is not None:
            conds.append(t.model == model)
        if since is not None:
            conds.append(t.time >= since)
        if until is not None:
            conds.append(t.time < until)
        return conds

    def query(
        self,
        *,
        tag: str | None = None,
        model: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[Call]:
        """Calls matching every filter given, oldest first; `since` inclusive, `until` exclusive (UTC)."""
        return list(self.iter(tag=tag, model=model, since=since, until=until))

    def iter(self, **filters: Any) -> Iterator[Call]:
        stmt = sa.select(calls_table).where(*self._where(**filters)).order_by(calls_table.c.time, calls_table.c.id)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as e:
            raise _store_error(self.name, e) from None
        for r in rows:
            yield _call(r)

    def count(self, **filters: Any) -> int:
        stmt = sa.select(sa.func.count()).select_from(calls_table).where(*self._where(**filters))
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(stmt).scalar_one())
        except SQLAlchemyError as e:
            raise _store_error(self.name, e) from None

    def distinct(self, column: str) -> list[str | None]:
        """The distinct values of `tag` or `model` in the store."""
        col = calls_table.c[column]
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(col).distinct().order_by(col))]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _store_error(name: str, e: Exception) -> OfframpError:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if isinstance(orig, sqlite3.DatabaseError) and "not a database" in text:
        return OfframpError(f"--store {name}: not an offramp traffic store (the file is not a SQLite database)")
    return OfframpError(f"--store {name}: {text}")


def open_store(url_or_path: str | Path, *, create: bool = True, catalogue: Any = None) -> Store:
    """Open (and with `create`, make) a store: a SQLite file path, or a `postgresql://user@host/db` URL.

    A file that is not SQLite, a database with other tables but no offramp schema, or a store of another schema
    version is one OfframpError; so is a store that does not exist when `create` is False."""
    name = shown(url_or_path)
    try:
        url = make_url(normalise_url(url_or_path))
    except ArgumentError as e:
        raise OfframpError(f"--store {name}: not a SQLite path or a database URL ({e})") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise OfframpError(f"--store {name}: use a SQLite file path or a postgresql:// URL")
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:":
            raise OfframpError(f"--store {name}: give a file path (an in-memory store would lose every call)")
        if path.is_dir():
            raise OfframpError(f"--store {name}: is a directory; give a file path")
        if not path.exists():
            if not create:
                raise OfframpError(f"--store {name}: no such store")
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        if url.get_driver_name() != "psycopg":
            raise OfframpError(f"--store {name}: PostgreSQL is reached with psycopg 3: use postgresql://…")
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        _check_schema(engine, name, create=create)
    except OfframpError:
        engine.dispose()
        raise
    except (OperationalError, DatabaseError, SQLAlchemyError) as e:
        engine.dispose()
        raise _store_error(name, e) from None
    return Store(engine, name, catalogue)


def _check_schema(engine: Engine, name: str, *, create: bool) -> None:
    with engine.begin() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        if not tables:
            if not create:
                raise OfframpError(f"--store {name}: empty database, no traffic recorded there")
            metadata.create_all(conn)
            conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if "offramp_meta" not in tables:
            listed = ", ".join(sorted(tables)[:5])
            raise OfframpError(f"--store {name}: not an offramp traffic store (has tables {listed}, no offramp_meta)")
        version = conn.execute(
            sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
        ).scalar_one_or_none()
        if version != str(SCHEMA_VERSION):
            raise OfframpError(
                f"--store {name}: traffic store schema version {version}, this offramp reads version "
                f"{SCHEMA_VERSION}; use a new store file (or the offramp that wrote it)"
            )
        if "offramp_calls" not in tables:
            raise OfframpError(f"--store {name}: traffic store is missing its offramp_calls table")
        have = {c["name"] for c in sa.inspect(conn).get_columns("offramp_calls")}
        if missing := [c for c in COLUMNS if c not in have]:
            raise OfframpError(f"--store {name}: offramp_calls lacks columns {', '.join(missing)} (another version)")
