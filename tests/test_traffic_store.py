"""The traffic store on real SQLite and real PostgreSQL: one schema, dedup, one transaction per write, queries,
list-price cost per call, durability settings, and one clear error for a store that is not ours."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
import sqlalchemy as sa
from conftest_traffic import postgres_server, store_url  # noqa: F401  (fixtures)

from offramp.cost.prices import load_catalogue
from offramp.errors import OfframpError
from offramp.traffic.store import Call, meta_table, normalise_url, open_store, shown

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def _call(i: int, *, tag="support", model="gpt-4o-mini", minutes=0, prompt=100, completion=10, cached=0, **kw):
    req = {"model": model, "messages": [{"role": "user", "content": f"query {i}"}], "temperature": 0}
    resp = {"id": f"chatcmpl-{i}", "choices": [{"message": {"role": "assistant", "content": f"label{i % 3}"}}]}
    return Call(
        request=req,
        response=resp,
        answer=f"label{i % 3}",
        time=T0 + dt.timedelta(minutes=minutes),
        model=model,
        tag=tag,
        status=200,
        latency_ms=123.5,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=None,
        **kw,
    )


def test_record_dedups_and_queries(store_url):  # noqa: F811
    with open_store(store_url) as s:
        assert s.record(_call(1)) is True
        assert s.record(_call(1)) is False  # same request + response + time: the dedup key
        added, already = s.record_many(
            [
                _call(1),
                _call(2, minutes=30),
                _call(3, tag="search", minutes=90),
                _call(4, model="gpt-4.1-nano", minutes=45),
            ]
        )
        assert (added, already) == (3, 1)
        assert s.count() == 4
        assert [c.answer for c in s.query(tag="support")] == ["label1", "label2", "label1"]
        assert [c.request["messages"][0]["content"] for c in s.query(tag="search")] == ["query 3"]
        assert [c.tag for c in s.query(model="gpt-4.1-nano")] == ["support"]
        window = s.query(since=T0 + dt.timedelta(minutes=30), until=T0 + dt.timedelta(minutes=90))
        assert [c.request["messages"][0]["content"] for c in window] == ["query 2", "query 4"]  # until exclusive
        c = s.query(tag="search")[0]
        assert c.time == T0 + dt.timedelta(minutes=90) and c.time.tzinfo is not None  # UTC-aware round trip
        assert c.latency_ms == 123.5 and c.status == 200 and c.reasoning_tokens is None and c.shadow is None
        assert c.response["id"] == "chatcmpl-3" and len(c.dedup_key) == 64 and c.id is not None
        assert sorted(s.distinct("tag")) == ["search", "support"]


def test_cost_from_the_catalogue_and_unknown_models_counted(store_url):  # noqa: F811
    p = load_catalogue().api_price("gpt-4o-mini")
    with open_store(store_url) as s:
        s.record_many(
            [
                _call(1, prompt=2000, completion=50, cached=1024),
                _call(2, model="gpt-4o-mini-2024-07-18", prompt=100, completion=10),
                _call(3, model="my-finetune-v3"),
                _call(4, prompt=None, completion=None),
            ]
        )
        got = {c.request["messages"][0]["content"]: c for c in s.query()}
    want1 = (976 * p.input_per_1m + 1024 * p.cached_input_per_1m + 50 * p.output_per_1m) / 1e6
    assert got["query 1"].cost_usd == pytest.approx(want1, rel=1e-12)
    assert got["query 2"].cost_usd == pytest.approx((100 * p.input_per_1m + 10 * p.output_per_1m) / 1e6, rel=1e-12)
    assert "gpt-4o-mini list price" in got["query 2"].cost_note  # the dated name priced as its catalogue entry
    assert got["query 3"].cost_usd is None and "not in the price catalogue" in got["query 3"].cost_note
    assert got["query 4"].cost_usd is None and "no usage" in got["query 4"].cost_note


def test_record_many_is_one_transaction(store_url):  # noqa: F811
    bad = _call(3, prompt=-1)  # the schema's CHECK (tokens >= 0) fails the third row inside the transaction
    with open_store(store_url) as s:
        with pytest.raises(OfframpError, match="ck_offramp_calls_prompt_tokens|CHECK constraint"):
            s.record_many([_call(1), _call(2), bad])
        assert s.count() == 0  # the first two rows were rolled back with it


def test_a_committed_write_is_visible_to_another_connection(store_url):  # noqa: F811
    with open_store(store_url) as writer:
        writer.record(_call(7))
        with open_store(store_url, create=False) as reader:  # a new engine: only committed rows reach it
            assert [c.answer for c in reader.query()] == ["label1"]


def test_schema_of_another_version_is_one_clear_error(store_url):  # noqa: F811
    open_store(store_url).close()
    engine = sa.create_engine(normalise_url(store_url))
    with engine.begin() as conn:
        conn.execute(sa.update(meta_table).values(value="99"))
    engine.dispose()
    with pytest.raises(OfframpError, match=r"schema version 99, this offramp reads version 1"):
        open_store(store_url)


def test_a_database_of_someone_else_is_refused(store_url):  # noqa: F811
    engine = sa.create_engine(normalise_url(store_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(OfframpError, match=r"not an offramp traffic store \(has tables invoices"):
        open_store(store_url)


def test_a_file_that_is_not_sqlite_is_one_clear_error(tmp_path):
    f = tmp_path / "calls.db"
    f.write_bytes(b"this is a CSV, not a database\n" * 100)
    with pytest.raises(OfframpError) as e:
        open_store(f)
    assert str(e.value) == f"--store {f}: not an offramp traffic store (the file is not a SQLite database)"
    assert f.read_bytes().startswith(b"this is a CSV")  # untouched
    with pytest.raises(OfframpError, match="no such store"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_sqlite_is_wal_with_synchronous_full(tmp_path):
    with open_store(tmp_path / "t.db") as s, s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    raw = sqlite3.connect(tmp_path / "t.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    raw.close()


def test_store_urls():
    assert normalise_url("postgresql://u:pw@db:5432/traffic") == "postgresql+psycopg://u:pw@db:5432/traffic"
    assert normalise_url("postgres://u@db/traffic") == "postgresql+psycopg://u@db/traffic"
    assert normalise_url("postgresql+psycopg://u@db/t") == "postgresql+psycopg://u@db/t"
    assert normalise_url("runs/traffic.db") == "sqlite:///runs/traffic.db"
    assert "pw" not in shown("postgresql://u:pw@db:5432/traffic")


def test_unreachable_postgres_is_one_line():
    from offramp.serve.server import free_port

    port = free_port()  # nothing listens on it
    with pytest.raises(OfframpError) as e:
        open_store(f"postgresql://postgres:secret@127.0.0.1:{port}/nope")
    msg = str(e.value)
    assert msg.startswith(f"--store postgresql://postgres:***@127.0.0.1:{port}/nope: ") and "\n" not in msg
    assert "secret" not in msg


def test_a_request_that_is_not_json_is_refused(tmp_path):
    c = _call(1)
    c.request["x"] = {1, 2}
    with open_store(tmp_path / "t.db") as s, pytest.raises(OfframpError, match="its request is not JSON"):
        s.record(c)


def test_a_naive_time_is_refused(tmp_path):
    c = _call(1)
    c.time = c.time.replace(tzinfo=None)
    with open_store(tmp_path / "t.db") as s, pytest.raises(OfframpError, match="no time zone"):
        s.record(c)
