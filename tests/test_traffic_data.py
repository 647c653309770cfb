"""`offramp data from-traffic` on a real SQLite store: the latest slice is the test split, duplicates go, a prompt
is never in both splits, captured system prompts and earlier turns are kept, the label set, and bad input."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pytest

from offramp.data import load_chat_jsonl, record_label
from offramp.errors import OfframpError
from offramp.traffic.dataset import Selection, from_traffic, parse_source
from offramp.traffic.store import Call, open_store

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
SYSTEM = "Route the support ticket to one queue: billing, shipping or login. Answer with the queue only."
QUEUES = ("billing", "shipping", "login")


def _call(i: int, *, text: str | None = None, answer: str | None = None, messages=None, **kw) -> Call:
    messages = messages or [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text or f"ticket {i}"},
    ]
    answer = answer or QUEUES[i % 3]
    fields = {"model": "gpt-4o-mini-2024-07-18", "tag": "support/route", "status": 200, "prompt_tokens": 40}
    return Call(
        request={"model": "gpt-4o-mini", "messages": messages, "temperature": 0, **kw.pop("extra", {})},
        response={"choices": [{"message": {"role": "assistant", "content": answer}}]},
        answer=answer,
        time=T0 + dt.timedelta(minutes=i),
        time_source="response.created",
        completion_tokens=2,
        **{**fields, **kw},
    )


def _store(path: Path, calls: list[Call]) -> str:
    shuffled = calls[:]
    random.Random(0).shuffle(shuffled)  # ids out of time order: the split must follow time, not insertion
    with open_store(path) as s:
        s.record_many(shuffled)
    return str(path)


def _read(d: Path, split: str) -> list[dict]:
    return [r["messages"] for r in load_chat_jsonl(d / f"{split}.jsonl")]


def _users(d: Path, split: str) -> list[str]:
    return [m[-2]["content"] for m in _read(d, split)]


def test_the_latest_slice_in_time_is_the_test_split(tmp_path):
    store = _store(tmp_path / "t.db", [_call(i) for i in range(10)])
    report = from_traffic(Selection(store, tag="support/route"), tmp_path / "out", test_fraction=0.3)
    assert _users(tmp_path / "out", "test") == ["ticket 7", "ticket 8", "ticket 9"]
    assert _users(tmp_path / "out", "train") == [f"ticket {i}" for i in range(7)]
    t = report["traffic"]
    assert t["test_range"] == {"first": (T0 + dt.timedelta(minutes=7)).isoformat(),
                               "last": (T0 + dt.timedelta(minutes=9)).isoformat()}  # fmt: skip
    assert t["train_range"]["last"] == (T0 + dt.timedelta(minutes=6)).isoformat()
    assert t["window"]["first"] == T0.isoformat()
    assert report["task"] == "support-route" and report["teacher"] == ["gpt-4o-mini-2024-07-18"]
    assert report["source"] == f"traffic:{store}?tag=support/route"
    assert "check your provider's terms" in report["terms_note"]


def test_exact_duplicates_are_kept_once_and_a_prompt_in_both_splits_stays_in_test_only(tmp_path):
    calls = [_call(i) for i in range(10)]
    calls.append(_call(3, extra={"user": "someone-else"}))  # same request but for the caller field: a duplicate
    calls[3].time = calls[-1].time = T0 + dt.timedelta(minutes=3, seconds=1)
    calls.append(_call(9, text="ticket 1", answer=QUEUES[1]))  # ticket 1 again, in the test slice
    calls[-1].time = T0 + dt.timedelta(minutes=9, seconds=30)
    store = _store(tmp_path / "t.db", calls)
    report = from_traffic(Selection(store), tmp_path / "out", test_fraction=0.34)
    train, test = _users(tmp_path / "out", "train"), _users(tmp_path / "out", "test")
    assert test == ["ticket 7", "ticket 8", "ticket 9", "ticket 1"]
    assert "ticket 1" not in train and train.count("ticket 3") == 1
    assert not set(train) & set(test)
    counts = report["traffic"]["counts"]
    assert (counts["calls"], counts["duplicates_removed"], counts["moved_to_test_only"]) == (12, 1, 1)
    assert (report["train"], report["test"]) == (6, 4)


def test_captured_system_prompt_and_earlier_turns_are_kept_as_they_were(tmp_path):
    turns = [
        {"role": "system", "content": "You are Acme's router."},
        {"role": "user", "content": "my parcel is late"},
        {"role": "assistant", "content": "Which order number?"},
        {"role": "user", "content": [{"type": "text", "text": "order 42"}]},  # content parts: their text
    ]
    calls = [_call(i) for i in range(6)] + [_call(6, messages=turns, answer="shipping")]
    store = _store(tmp_path / "t.db", calls)
    from_traffic(Selection(store), tmp_path / "out", test_fraction=0.2)
    last = _read(tmp_path / "out", "test")[-1]
    assert last == [*turns[:3], {"role": "user", "content": "order 42"}, {"role": "assistant", "content": "shipping"}]
    assert {m[0]["content"] for m in _read(tmp_path / "out", "train")} == {SYSTEM}
    api = [r["messages"] for r in load_chat_jsonl(tmp_path / "out" / "api_prompts.jsonl")]
    assert api == _read(tmp_path / "out", "test")  # the requests as the API was sent them

    report = from_traffic(Selection(store), tmp_path / "own", test_fraction=0.2, system="Queue?")
    last = _read(tmp_path / "own", "test")[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant"]
    assert last[0]["content"] == "Queue?" and report["prompt_style"] == "--system"
    assert {m[0]["content"] for m in _read(tmp_path / "own", "train")} == {"Queue?"}
    api = [r["messages"] for r in load_chat_jsonl(tmp_path / "own" / "api_prompts.jsonl")]
    assert api[-1][0]["content"] == "You are Acme's router."  # the API was sent the captured prompt


def test_a_label_set_writes_labels_json_and_free_text_does_not(tmp_path):
    store = _store(tmp_path / "t.db", [_call(i, answer=f" {QUEUES[i % 3]}\n") for i in range(12)])
    report = from_traffic(Selection(store), tmp_path / "cls")
    assert json.loads((tmp_path / "cls" / "labels.json").read_text()) == sorted(QUEUES)
    assert {record_label(r) for r in load_chat_jsonl(tmp_path / "cls" / "train.jsonl")} == set(QUEUES)
    assert report["kind"] == "classification" and report["labels"] == 3

    prose = [_call(i, answer=f"Dear customer, reply number {i}.") for i in range(12)]
    store = _store(tmp_path / "free.db", prose)
    report = from_traffic(Selection(store), tmp_path / "free")
    assert not (tmp_path / "free" / "labels.json").exists()
    assert report["kind"] == "generation" and report["labels"] == 0
    assert _read(tmp_path / "free", "test")[-1][-1]["content"] == "Dear customer, reply number 11."


def test_failed_and_unanswered_calls_are_left_out_and_spend_is_per_request(tmp_path):
    calls = [_call(i, cost_usd=0.001 * (i + 1), cost_note="test price") for i in range(8)]
    calls.append(_call(8, status=429, answer=None))
    calls[-1].answer = None
    store = _store(tmp_path / "t.db", calls)
    report = from_traffic(Selection(store), tmp_path / "out")
    counts, spend = report["traffic"]["counts"], report["traffic"]["spend"]
    assert (counts["calls"], counts["unanswered"], counts["selected"]) == (9, 1, 8)
    assert spend["usd"] == pytest.approx(0.036) and spend["usd_per_request"] == pytest.approx(0.0045)


def test_the_pipeline_source_names_store_and_filters():
    sel = parse_source("traffic:/data/t.db?tag=support/route&model=gpt-4o-mini&since=2026-11-30")
    assert (sel.store, sel.tag, sel.model, sel.since) == (
        "/data/t.db",
        "support/route",
        "gpt-4o-mini",
        T0.replace(hour=0),
    )
    with pytest.raises(OfframpError, match="unknown filter 'tags'"):
        parse_source("traffic:t.db?tags=x")
    with pytest.raises(OfframpError, match="name the store"):
        parse_source("traffic:?tag=x")
    assert Selection("postgresql://u:secret@h/db", tag="a").source() == "traffic:postgresql://u:***@h/db?tag=a"


def _fails(cli, out: Path, *args: str) -> str:
    r = cli("data", "from-traffic", "--out", str(out), *args)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("offramp: error: "), r.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing half-written
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not a database, just bytes " * 100)
    assert "not an offramp traffic store" in _fails(cli, tmp_path / "a", "--store", str(tmp_path / "junk.db"))
    assert "no such store" in _fails(cli, tmp_path / "b", "--store", str(tmp_path / "missing.db"))
    store = _store(tmp_path / "t.db", [_call(i) for i in range(10)] + [_call(10, tag="sales/lead")])
    line = _fails(cli, tmp_path / "c", "--store", store, "--tag", "support/rout")
    assert "no calls matching --tag support/rout" in line and "sales/lead, support/route" in line
    line = _fails(cli, tmp_path / "d", "--store", store, "--since", "2026-12-01", "--until", "2026-12-02")
    assert "no calls matching --since 2026-12-01" in line
    line = _fails(cli, tmp_path / "e", "--store", store, "--tag", "sales/lead")
    assert "too few calls for a test split" in line
    assert "--test-fraction must be in (0, 1)" in _fails(cli, tmp_path / "f", "--store", store, "--test-fraction", "1")


def test_the_command_writes_what_eval_and_finetune_read(cli, tmp_path):
    from offramp.artifacts import load_report
    from offramp.evals.tasks import load_task

    store = _store(tmp_path / "t.db", [_call(i) for i in range(10)])
    r = cli("data", "from-traffic", "--store", store, "--tag", "support/route", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "train 8" in r.stderr and "test 2" in r.stderr and "gpt-4o-mini-2024-07-18" in r.stderr
    task = load_task(str(tmp_path / "out" / "test.jsonl"))
    assert task.name == "support-route" and task.labels == sorted(QUEUES) and len(task.queries) == 2
    assert task.queries[0].messages[0] == {"role": "system", "content": SYSTEM}
    rep = load_report(tmp_path / "out" / "data_report.json", "data")
    assert rep.teacher == ["gpt-4o-mini-2024-07-18"] and rep.traffic["counts"]["train"] == 8
