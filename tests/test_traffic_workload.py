"""The traffic source spec and the workload measured from it; `offramp breakeven --traffic` end to end.

Every expected figure is worked out by hand here from the calls the test stores, never with the code under test.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest_traffic import T0, _drop_database, _fresh_database, postgres_server, store_url  # noqa: F401
from test_cost_cli import bench_file

from offramp.cost.prices import load_catalogue
from offramp.errors import OfframpError
from offramp.traffic.store import Call, open_store
from offramp.traffic.workload import load, measure, parse_spec

PRICE = load_catalogue().api_price("gpt-4o-mini")
# 8 "intent" calls of gpt-4o-mini over T0's hour and two hours after it: 6 in the first hour, none in the second,
# 2 in the third. Window: 3 hours; mean 8/3 calls per hour, peak 6: peak-to-average 2.25; 8/3 × 730 per month.
MINUTES = [0, 10, 20, 30, 40, 50, 130, 150]
PROMPT, COMPLETION, REASONING, CACHED = 2000, 20, 5, 1024  # cached on every other call (above the 1024 minimum)


def _cost(cached: int) -> float:
    """What one intent call costs at gpt-4o-mini's list prices: uncached input, cache reads, completion."""
    return ((PROMPT - cached) * PRICE.input_per_1m + cached * PRICE.cached_input_per_1m) / 1e6 + (
        COMPLETION * PRICE.output_per_1m / 1e6
    )


def intent_calls() -> list[Call]:
    calls = []
    for i, minute in enumerate(MINUTES):
        calls.append(
            Call(
                request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"query {i}"}]},
                answer="card_arrival",
                time=T0 + dt.timedelta(minutes=minute),
                model="gpt-4o-mini",
                tag="intent",
                status=200,
                prompt_tokens=PROMPT,
                cached_tokens=CACHED if i % 2 else 0,
                completion_tokens=COMPLETION,
                reasoning_tokens=REASONING,
            )
        )
    return calls


def other_calls() -> list[Call]:
    """Two calls of another tag and model, inside the intent window."""
    return [
        Call(
            request={"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": f"summarise {i}"}]},
            answer="a summary",
            time=T0 + dt.timedelta(minutes=15 + i),
            model="gpt-4.1-nano",
            tag="summaries",
            status=200,
            prompt_tokens=300,
            completion_tokens=40,
        )
        for i in range(2)
    ]


def fill(url: str, calls: list[Call]) -> str:
    with open_store(url) as s:
        s.record_many(calls)
    return url


# --- the spec ---------------------------------------------------------------------------------------------------


def test_spec_of_a_sqlite_path_takes_the_four_filters() -> None:
    spec = parse_spec("runs/t.db?tag=support/intent&model=gpt-4o-mini&since=2026-11-30&until=2026-12-01T12:00Z")
    assert spec.store == "runs/t.db"
    assert (spec.tag, spec.model) == ("support/intent", "gpt-4o-mini")
    assert spec.since == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert spec.until == dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    assert parse_spec("t.db").filters() == {"tag": None, "model": None, "since": None, "until": None}
    assert parse_spec("t.db?tag=a%26b").tag == "a&b"  # a percent-encoded & stays in the value
    assert parse_spec("t.db?since=2026-11-30T10:00+01:00").since == dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)


def test_spec_of_a_postgresql_url_leaves_the_url_its_own_query() -> None:
    spec = parse_spec("postgresql://u:secret@db:5432/traffic?sslmode=require&tag=intent&connect_timeout=5")
    assert spec.store == "postgresql://u:secret@db:5432/traffic?sslmode=require&connect_timeout=5"
    assert spec.tag == "intent"
    assert "secret" not in spec.text and "intent" in spec.text
    assert parse_spec("postgresql://u@db/traffic?tag=x").store == "postgresql://u@db/traffic"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t.db?tga=intent", "unknown filter 'tga'"),
        ("t.db?tag=a&tag=b", "tag given twice"),
        ("t.db?tag=", "tag has no value"),
        ("t.db?since=yesterday", "not an ISO date"),
        ("t.db?since=2026-12-02&until=2026-12-01", "is not after since"),
        ("?tag=intent", "give a store"),
    ],
)
def test_bad_spec_is_one_error(text: str, message: str) -> None:
    with pytest.raises(OfframpError, match=message):
        parse_spec(text)


def test_postgresql_url_with_its_own_parameter_opens(postgres_server: str) -> None:  # noqa: F811
    url = _fresh_database(postgres_server)
    try:
        fill(f"{url}?connect_timeout=5", [*intent_calls(), *other_calls()])
        measured = load(f"{url}?connect_timeout=5&tag=intent")  # the URL keeps connect_timeout, offramp takes tag
        assert measured.calls == len(MINUTES)
        assert measured.models == {"gpt-4o-mini": len(MINUTES)}
    finally:
        _drop_database(postgres_server, url)


# --- the figures ------------------------------------------------------------------------------------------------


def test_workload_figures_from_known_calls(store_url: str) -> None:  # noqa: F811
    fill(store_url, [*intent_calls(), *other_calls()])
    with open_store(store_url, create=False) as s:
        t = measure(s, parse_spec("x.db?tag=intent"))
    n = len(MINUTES)
    assert t.calls == n
    assert t.fields["requests_per_month"] == pytest.approx(n / 3 * 730)
    assert t.fields["peak_to_average"] == pytest.approx(6 / (n / 3))
    assert t.fields["input_tokens"] == t.fields["api_input_tokens"] == PROMPT
    assert t.fields["output_tokens"] == COMPLETION - REASONING  # completion_tokens includes reasoning
    assert t.fields["reasoning_tokens"] == REASONING
    assert t.fields["cached_input_share"] == pytest.approx(n // 2 * CACHED / (n * PROMPT))
    paid = (n // 2) * _cost(CACHED) + (n - n // 2) * _cost(0)
    assert t.paid["in_window_usd"] == pytest.approx(paid)
    assert t.paid["per_request_usd"] == pytest.approx(paid / n)
    for key in ("requests_per_month", "peak_to_average", "input_tokens", "output_tokens", "cached_input_share"):
        assert t.provenance[key].startswith(f"measured from {n} captured calls, 2026-11-30 09:00 UTC–2026-11-30 12:00")
    assert any("under a day" in w for w in t.warnings)


def test_empty_window_unknown_tag_and_model_are_one_error_each(tmp_path: Path) -> None:
    url = fill(str(tmp_path / "t.db"), [*intent_calls(), *other_calls()])
    with pytest.raises(OfframpError, match=r"no call has tag 'nope'; tags in the store: intent, summaries"):
        load(f"{url}?tag=nope")
    with pytest.raises(OfframpError, match=r"no call has model 'gpt-5'; models in the store: gpt-4.1-nano, gpt-4o"):
        load(f"{url}?model=gpt-5")
    with pytest.raises(OfframpError, match=r"no calls in that window \(the store has 10 calls\)"):
        load(f"{url}?tag=intent&since=2027-01-01")
    empty = tmp_path / "empty.db"
    open_store(empty).close()
    with pytest.raises(OfframpError, match="the store holds no calls"):
        load(str(empty))
    with pytest.raises(OfframpError, match="no such store"):
        load(str(tmp_path / "missing.db"))


def test_a_window_under_an_hour_warns_and_still_extrapolates(tmp_path: Path) -> None:
    url = fill(str(tmp_path / "t.db"), intent_calls()[:3])  # minutes 0, 10, 20
    t = load(f"{url}?since=2026-11-30T09:00Z&until=2026-11-30T09:30Z")
    assert t.fields["requests_per_month"] == pytest.approx(3 / 0.5 * 730)
    assert any("under an hour" in w for w in t.warnings)


# --- offramp breakeven --traffic ------------------------------------------------------------------------------


def breakeven_args(tmp_path: Path, spec: str, *extra: str) -> list[str]:
    bench = bench_file(tmp_path)
    return [
        "breakeven", "--traffic", spec, "--bench", str(bench), "--host", "aws-c7a-large",
        "--ops-hours-per-month", "0", "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip


def test_breakeven_takes_the_workload_from_the_traffic(cli, tmp_path: Path) -> None:
    url = fill(str(tmp_path / "t.db"), [*intent_calls(), *other_calls()])
    proc = cli(*breakeven_args(tmp_path, f"{url}?tag=intent", "--peak-to-average", "3"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())
    n = len(MINUTES)
    w = report["workload"]
    assert report["api"]["name"] == "gpt-4o-mini"  # the catalogue price of the model the traffic used
    assert w["requests_per_month"] == pytest.approx(n / 3 * 730)
    assert (w["input_tokens"], w["output_tokens"], w["reasoning_tokens"]) == (PROMPT, COMPLETION - REASONING, 5)
    assert w["peak_to_average"] == 3  # the flag overrides that one figure...
    assert "peak_to_average" not in w["provenance"]
    assert "over the measured 2.25" in report["traffic"]["overridden"]["peak_to_average"]  # ...and says so
    assert report["summary"]["requests_per_month"]["source"] == "traffic"
    assert report["summary"]["requests_per_month"]["from"].startswith(f"measured from {n} captured calls, 2026-11-30")
    assert report["summary"]["peak_to_average"]["source"] == "user"
    paid = ((n // 2) * _cost(CACHED) + (n - n // 2) * _cost(0)) / n
    assert report["traffic"]["paid"]["per_request_usd"] == pytest.approx(paid)
    assert report["summary"]["traffic_paid_per_request_usd"]["value"] == pytest.approx(paid)
    # the catalogue price of that same mix is what the traffic paid per call, at these list prices
    assert report["api"]["cost"]["per_request_usd"]["value"] == pytest.approx(paid, rel=1e-9)
    assert not any("under a day" in x for x in report["warnings"])  # --peak-to-average answered that caution
    assert "traffic paid $ / request" in proc.stdout
    page = (tmp_path / "out" / "breakeven.html").read_text()
    assert f"Workload measured from {n} captured calls" in page
    assert f"traffic: measured from {n} captured calls" in page  # the summary's source column


def _corrupt(tmp_path: Path) -> str:
    bad = tmp_path / "corrupt.db"
    bad.write_text("not a database at all\n" * 50)
    return str(bad)


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        (_corrupt, (), "not an offramp traffic store"),
        ("{db}?since=2027-01-01", (), "no calls in that window"),
        ("{db}?tag=nope", (), "tags in the store: intent, summaries"),
        ("{db}", (), "the calls are of gpt-4o-mini (8 calls), gpt-4.1-nano (2 calls): pick one with ?model="),
        ("{db}?tag=intent", ("--workload", "w.yaml"), "give it without --workload"),
        ("{db}?tgs=intent", (), "unknown filter 'tgs'"),
    ],
)
def test_breakeven_traffic_bad_input_is_one_error(cli, tmp_path: Path, spec, extra, message) -> None:
    db = fill(str(tmp_path / "t.db"), [*intent_calls(), *other_calls()])
    text = spec(tmp_path) if callable(spec) else spec.format(db=db)
    proc = cli(*breakeven_args(tmp_path, text, *extra))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("offramp: error:") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_breakeven_without_api_or_traffic_says_what_to_give(cli, tmp_path: Path) -> None:
    proc = cli("breakeven", "--bench", str(bench_file(tmp_path)), "--host", "aws-c7a-large")
    assert proc.returncode == 1
    assert "give --api NAME" in proc.stderr


# --- offramp bench --traffic: the captured requests are the load -----------------------------------------------

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def replay_calls() -> list[Call]:
    """Three captured chat calls: a max_tokens cap, a max_completion_tokens cap, and none (observed length)."""
    caps = [{"max_tokens": 7}, {"max_completion_tokens": 9}, {}]
    return [
        Call(
            request={
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Sort tickets."},
                    {"role": "user", "content": f"ticket {i}"},
                ],
                **cap,
            },
            answer="billing",
            time=T0 + dt.timedelta(minutes=i),
            model="gpt-4o-mini",
            tag="intent",
            status=200,
            prompt_tokens=12,
            completion_tokens=3 + i,
        )
        for i, cap in enumerate(caps)
    ]


def test_replay_prompts_are_the_stored_requests_oldest_first(tmp_path: Path) -> None:
    from offramp.traffic.workload import replay_prompts

    url = fill(str(tmp_path / "t.db"), [*reversed(replay_calls()), *other_calls()])
    items, info = replay_prompts(f"{url}?tag=intent")
    assert [i["messages"][1]["content"] for i in items] == ["ticket 0", "ticket 1", "ticket 2"]
    assert [(i["max_tokens"], i["max_tokens_from"]) for i in items] == [(7, "request"), (9, "request"), (5, "observed")]
    assert info["replayed"] == info["calls"] == 3 and info["max_tokens_from"] == {"request": 2, "observed": 1}


def word_tokenizer(d: Path) -> Path:
    """A real (tiny, word-level) HF tokenizer with a chat template, saved as a tokenizer dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(d)
    return d


def test_bench_load_is_the_captured_prompts_with_their_caps(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from offramp.serve.bench import BenchSettings, render_workload, vllm_bench_argv

    url = fill(str(tmp_path / "t.db"), replay_calls())
    s = BenchSettings(endpoint="http://127.0.0.1:1", workload="", concurrency=[1], num_prompts=4, traffic=url)
    info = render_workload(s, str(word_tokenizer(tmp_path / "tok")), tmp_path / "load.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "load.jsonl").read_text().splitlines()]
    expected = [f"<system>Sort tickets.\n<user>ticket {i}\n<assistant>" for i in (0, 1, 2, 0)]  # cycled
    assert [x["prompt"] for x in lines] == expected
    assert [x["output_tokens"] for x in lines] == [7, 9, 5, 7]
    assert info["traffic"]["replayed"] == 3 and info["source"] == url
    argv = vllm_bench_argv(s, "http://127.0.0.1:1", "m", "t", tmp_path / "load.jsonl")
    assert argv[argv.index("--custom-output-len") + 1] == "-1"  # vLLM then reads each line's output_tokens


def test_bench_traffic_bad_input_is_one_error_before_the_runtime_env(cli, tmp_path: Path) -> None:
    url = fill(str(tmp_path / "t.db"), replay_calls())
    for args, message in (
        (["--traffic", f"{url}?tag=nope"], "tags in the store: intent"),
        (["--traffic", url, "--workload", "banking77"], "not both"),
        ([], "give the load"),
    ):
        proc = cli("bench", "http://127.0.0.1:9", *args, "--out", str(tmp_path / "b"))
        err = proc.stderr.strip()
        assert proc.returncode == 1 and err.startswith("offramp: error:") and len(err.splitlines()) == 1, err
        assert message in err, err
        assert not (tmp_path / "b").exists()


@pytest.mark.vllm
def test_bench_replays_captured_traffic_against_vllm(vllm_tiny, cli, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    url = fill(str(tmp_path / "t.db"), replay_calls())
    out = tmp_path / "bench"
    r = cli(
        "bench", vllm_tiny.base_url, "--traffic", f"{url}?tag=intent", "--concurrency", "1,2", "--num-prompts", "3",
        "--slo-p99-ttft-s", "30", "--slo-p99-tpot-ms", "1000", "--out", str(out), timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    body = json.loads((out / "bench_report.json").read_text())
    tok = AutoTokenizer.from_pretrained(body["settings"]["tokenizer"])
    sent = [c.request["messages"] for c in replay_calls()]
    tokens = sum(
        len(tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)).input_ids) for m in sent
    )
    for p in body["points"]:
        assert p["completed"] == 3
        assert p["server_counted"]["prompt_tokens"] == tokens  # the server received exactly the stored prompts
        assert p["server_counted"]["generation_tokens"] <= 7 + 9 + 5  # within each request's own cap
    assert body["workload"]["traffic"]["replayed"] == 3
