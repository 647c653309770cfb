"""`offramp traffic import` on real SQLite and PostgreSQL: Batch API pairs, SDK logs, chat JSONL; bad lines,
--skip-bad, mismatched pairs, and importing twice adds nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest_traffic import QUERIES, T0, batch_pair, postgres_server, store_url  # noqa: F401  (fixtures)

from offramp.cost.prices import load_catalogue
from offramp.traffic.store import open_store


def _count(url: str) -> int:
    with open_store(url, create=False) as s:
        return s.count()


def test_batch_pair_imports_once(cli, tmp_path, store_url):  # noqa: F811
    inp, out, usage = batch_pair(tmp_path)
    r = cli("traffic", "import", str(inp), str(out), "--store", store_url)
    assert r.returncode == 0, r.stderr
    assert "added 5, already there 0, skipped 0 bad lines" in r.stdout
    assert "req-input.jsonl: batch-input, req-output.jsonl: batch-output" in r.stdout
    p = load_catalogue().api_price("gpt-4o-mini")
    with open_store(store_url, create=False) as s:
        calls = s.query()
    assert [c.custom_id for c in calls] == [f"req-{i}" for i in range(5)]
    for i, (c, u, (q, a)) in enumerate(zip(calls, usage, QUERIES, strict=True)):
        assert c.source == "openai-batch" and c.provider == "openai" and c.upstream == "/v1/chat/completions"
        assert c.time == T0 + dt.timedelta(minutes=10 * i) and c.time_source == "response.created"
        assert c.request["messages"][1]["content"] == q and c.answer == a and c.status == 200
        assert (c.prompt_tokens, c.completion_tokens, c.cached_tokens, c.reasoning_tokens) == (
            u["prompt_tokens"],
            u["completion_tokens"],
            0,
            0,
        )
        assert c.model == "gpt-4o-mini-2024-07-18" and c.latency_ms is None and c.tag is None
        batch = 1 - p.batch_discount  # a Batch API call pays the batch price
        want = (u["prompt_tokens"] * p.input_per_1m + u["completion_tokens"] * p.output_per_1m) / 1e6 * batch
        assert c.cost_usd == pytest.approx(want, rel=1e-12)
    again = cli("traffic", "import", str(out), str(inp), "--store", store_url)
    assert again.returncode == 0, again.stderr
    assert "added 0, already there 5, skipped 0 bad lines" in again.stdout
    assert _count(store_url) == 5


def test_a_malformed_line_is_reported_and_nothing_is_written(cli, tmp_path, store_url):  # noqa: F811
    first_in, first_out, _ = batch_pair(tmp_path, QUERIES[:2], prefix="old")
    assert cli("traffic", "import", str(first_in), str(first_out), "--store", store_url).returncode == 0
    inp, out, _ = batch_pair(tmp_path, start=T0 + dt.timedelta(days=1))
    lines = out.read_text().splitlines()
    lines[2] = lines[2][:40]  # a truncated line: line 3 of the output file
    out.write_text("\n".join(lines) + "\n")
    r = cli("traffic", "import", str(inp), str(out), "--store", store_url)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"offramp: error: {out}:3: not valid JSON"), r.stderr
    assert "nothing imported" in err[0] and "Traceback" not in r.stderr
    assert _count(store_url) == 2  # unchanged: one transaction for the whole import
    r = cli("traffic", "import", str(inp), str(out), "--store", store_url, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert "added 4, already there 0, skipped 1 bad lines" in r.stdout
    assert f"{out}:3: not valid JSON" in r.stderr  # the skipped line is still named
    assert "1 batch input line(s) have no output line" in r.stderr and "req-2" in r.stderr
    assert _count(store_url) == 6


def test_mismatched_pairs_are_reported(cli, tmp_path):
    store = str(tmp_path / "t.db")
    inp, out, _ = batch_pair(tmp_path)
    other_in, _, _ = batch_pair(tmp_path, prefix="other")
    r = cli("traffic", "import", str(other_in), str(out), "--store", store)  # outputs whose custom_id has no input
    assert r.returncode == 1
    assert f"{out}:1: custom_id req-0 has no line in the batch input files given (mismatched pair)" in r.stderr
    assert "and 4 more bad lines" in r.stderr
    assert not (tmp_path / "t.db").exists()  # refused before the store was opened
    r = cli("traffic", "import", str(inp), str(other_in), str(out), "--store", store)  # inputs with no output
    assert r.returncode == 0, r.stderr
    assert "added 5, already there 0, skipped 0" in r.stdout
    assert "5 batch input line(s) have no output line (mismatched pair: not imported): other-0" in r.stderr


def _sdk_line(i, *, tag=None, user=None, created=True):
    req = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
    if tag:
        req["metadata"] = {"tag": tag}
    if user:
        req["user"] = user
    resp = {
        "id": f"c{i}",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"message": {"role": "assistant", "content": f"a{i}"}}],
        "usage": {
            "prompt_tokens": 1500,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if created:
        resp["created"] = int(T0.timestamp()) + i
    return {"request": req, "response": resp, "latency_ms": 250 + i}


def test_sdk_log_and_chat_jsonl(cli, tmp_path):
    store = str(tmp_path / "t.db")
    sdk = tmp_path / "sdk.jsonl"
    sdk.write_text(
        "\n".join(json.dumps(x) for x in [_sdk_line(0, tag="faq", user="u1"), _sdk_line(1, user="u2"), _sdk_line(2)])
        + "\n"
    )
    chat = tmp_path / "chat.jsonl"
    rec = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "greeting"}]}
    chat.write_text(json.dumps(rec) + "\n\n" + json.dumps(rec) + "\n" + json.dumps({**rec, "model": "gpt-4o"}) + "\n")
    r = cli("traffic", "import", str(sdk), str(chat), "--store", store)
    assert r.returncode == 0, r.stderr
    assert "added 6, already there 0" in r.stdout and "sdk.jsonl: sdk, chat.jsonl: chat" in r.stdout
    with open_store(store) as s:
        calls = {c.source: [] for c in s.query()}
        for c in s.query():
            calls[c.source].append(c)
    sdk_calls = sorted(calls["sdk-log"], key=lambda c: c.request["messages"][0]["content"])
    assert [c.tag for c in sdk_calls] == ["faq", "u2", None]  # metadata.tag wins over user
    assert [c.latency_ms for c in sdk_calls] == [250.0, 251.0, 252.0]
    p = load_catalogue().api_price("gpt-4o-mini")
    want = (476 * p.input_per_1m + 1024 * p.cached_input_per_1m + 20 * p.output_per_1m) / 1e6  # realtime price
    assert sdk_calls[0].cost_usd == pytest.approx(want, rel=1e-12) and sdk_calls[0].cached_tokens == 1024
    chats = calls["chat-jsonl"]
    assert len(chats) == 3  # two identical lines are two calls
    assert all(c.prompt_tokens is None and c.completion_tokens is None and c.cost_usd is None for c in chats)
    assert sorted(c.cost_note for c in chats) == ["no model in the record"] * 2 + [
        "no usage in the record (tokens unknown)"
    ]
    assert all(c.time_source == "import" and c.answer == "greeting" for c in chats)
    again = cli("traffic", "import", str(chat), str(sdk), "--store", store, "--tag", "ignored-on-dups")
    assert "added 0, already there 6" in again.stdout
    tagged = cli("traffic", "import", str(sdk), "--store", str(tmp_path / "t2.db"), "--tag", "nightly")
    assert tagged.returncode == 0, tagged.stderr
    with open_store(tmp_path / "t2.db") as s:
        assert {c.tag for c in s.query()} == {"nightly"}  # --tag tags every imported call


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('["a list"]', "a JSON list, not an object"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "the last message is not an assistant turn (the answer)"),
        ('{"messages": []}', "no messages list"),
    ],
)
def test_chat_lines_that_cannot_be_imported(cli, tmp_path, line, reason):
    f = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    f.write_text(json.dumps(good) + "\n" + line + "\n")
    r = cli("traffic", "import", str(f), "--store", str(tmp_path / "t.db"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"offramp: error: {f}:2: {reason}; nothing imported (--skip-bad skips such lines)"


def test_an_unknown_format_names_the_file(cli, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "completion-style"}\n')
    r = cli("traffic", "import", str(f), "--store", str(tmp_path / "t.db"))
    assert r.returncode == 1 and f"{f}:1: format not recognised (give --format" in r.stderr
    r = cli("traffic", "import", str(f), "--store", str(tmp_path / "t.db"), "--format", "chat")
    assert r.returncode == 1 and f"{f}:1: no messages list" in r.stderr
