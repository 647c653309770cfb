"""`offramp breakeven` end to end as a subprocess: files written, numbers traceable, bad input → one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from offramp.cost.prices import load_catalogue

HW = {"cpu": "AMD EPYC", "cpu_cores": 2, "gpus": []}
# Expectations come from the catalogue, never pinned (a user who edits prices.yaml must not break CI).
_CAT = load_catalogue()
HOUR = _CAT.host_price("aws-c7a-large").on_demand_per_hour
_P = _CAT.api_price("gpt-4o")
API_REQ = (256 * _P.input_per_1m + 64 * _P.output_per_1m) / 1e6  # USD per request of 256 in / 64 out
POINT = {
    "concurrency": 4, "completed": 40, "failed": 0, "duration_s": 20.0, "requests_per_s": 2.0,
    "input_tokens": 40 * 256, "output_tokens": 40 * 64, "input_tokens_per_s": 512.0, "output_tokens_per_s": 128.0,
    "ttft_ms": {"mean": 300.0, "p50": 280.0, "p99": 900.0}, "tpot_ms": {"mean": 25.0, "p50": 24.0, "p99": 40.0},
    "itl_ms": {"mean": 25.0, "p50": 24.0, "p99": 40.0}, "meets_slo": True,
}  # fmt: skip


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def bench_file(tmp_path: Path, *, sustainable: bool = True, model: str = "smollm2-135m-instruct") -> Path:
    report = {
        "stage": "bench", "created_at": "2026-11-24T06:00:00+00:00", "hardware": HW, "model": model,
        "endpoint": "http://127.0.0.1:8000/v1", "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 100.0},
        "points": [POINT], "sustainable": POINT if sustainable else None,
    }  # fmt: skip
    return write_json(tmp_path / "bench_report.json", report)


def base_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "breakeven", "--api", "gpt-4o", "--bench", str(bench_file(tmp_path)), "--host", "aws-c7a-large",
        "--requests-per-month", "1000000", "--input-tokens", "256", "--output-tokens", "64",
        "--peak-to-average", "1.5", "--ops-hours-per-month", "0", "--out", str(tmp_path / "out"), *extra,
    ]  # fmt: skip


def fails(cli, args: list[str], message: str, tmp_path: Path) -> str:
    proc = cli(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("offramp: error:") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written
    return err


def test_writes_report_and_plot(cli, tmp_path):
    ft = write_json(
        tmp_path / "finetune_report.json",
        {"stage": "finetune", "created_at": "x", "hardware": HW, "base_model": "smollm2-135m-instruct",
         "adapter_dir": "a", "wall_time_s": 600, "train_tokens_per_s": 100, "run_cost_usd": 40.0},
    )  # fmt: skip
    proc = cli(*base_args(tmp_path, "--finetune", str(ft), "--eng-hours", "10", "--eng-rate", "100",
                          "--escalation-share", "0.25"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["breakeven.html", "breakeven.png", "breakeven_report.json"]
    assert (out / "breakeven.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "breakeven.html").read_text()
    assert "NEEDS-EVAL" in page and "break-even volume" in page and "data:image/png;base64," in page
    report = json.loads((out / "breakeven_report.json").read_text())
    assert (report["stage"], report["plot"], report["model"]) == ("breakeven", "breakeven.png", "smollm2-135m-instruct")
    # 256 × input + 64 × output per 1M, × 1M requests
    assert report["api"]["cost"]["monthly_usd"]["value"] == pytest.approx(API_REQ * 1e6)
    assert report["api"]["list_prices"]["input_per_1m"]["reference"] == "https://openai.com/api/pricing/"
    # one-offs: 40 (fine-tune) + 10 h × 100 = 1040 over 12 months
    assert report["one_off"]["total_usd"] == pytest.approx(1040.0)
    host = report["self_hosted"]["cost"]
    assert host["monthly_usd"]["value"] == pytest.approx(730 * HOUR + 1040 / 12)
    # break-even with 1 replica: (host + one-offs per month) / API per request
    assert report["break_even"]["volume"] == pytest.approx((730 * HOUR + 1040 / 12) / API_REQ)
    assert report["decision"]["verdict"] == "NEEDS-EVAL"
    # cascade: the same host + 25 % of the requests at the API's price
    assert report["cascade"]["monthly_usd"] == pytest.approx(host["monthly_usd"]["value"] + 0.25 * API_REQ * 1e6)
    assert "cascade, 25% to API" in proc.stdout
    assert "gpt-4o vs smollm2-135m-instruct on aws-c7a-large" in proc.stdout
    assert "measured on AMD EPYC, 2 cores" in proc.stdout and "list price 2025-06" in proc.stdout


def test_eval_gate_decides_quality(cli, tmp_path):
    def eval_file(verdict: str) -> Path:
        return write_json(
            tmp_path / f"eval_{verdict}.json",
            {"stage": "eval", "created_at": "x", "hardware": HW, "task": "banking77", "n_queries": 10,
             "systems": [], "gate": {"expression": "accuracy>=baseline-1", "verdict": verdict, "reason": "r"}},
        )  # fmt: skip

    go = cli(*base_args(tmp_path, "--eval", str(eval_file("GO"))))
    assert go.returncode == 0 and "GO: self-hosted" in go.stdout
    no = cli(*base_args(tmp_path, "--eval", str(eval_file("NO-GO"))))
    assert no.returncode == 0
    report = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())
    assert report["decision"]["verdict"] == "NO-GO"
    assert report["decision"]["reasons"][0] == "quality gate fails: r"


def test_workload_file_prices_file_and_host_price_flag(cli, tmp_path):
    wl = tmp_path / "workload.yaml"
    wl.write_text(yaml.safe_dump({"requests_per_month": 2e6, "input_tokens": 256, "output_tokens": 64,
                                  "cached_input_share": 0.5, "batch_tolerant": True}))  # fmt: skip
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"api": {"my-llm": {"input_per_1m": 1.0, "cached_input_per_1m": 0.5,
                                      "output_per_1m": 2.0, "batch_discount": 0.5, "batch_applies_to_cached": True,
                                      "date": "2025-09", "source": "contract 7"}}}))  # fmt: skip
    args = ["breakeven", "--api", "my-llm", "--prices", str(prices), "--bench", str(bench_file(tmp_path)),
            "--host-price-per-hour", "0.2", "--workload", str(wl), "--out", str(tmp_path / "out")]  # fmt: skip
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())
    assert report["api"]["mode"] == "batch"
    # batch, stacking: (128 × 0.5 + 128 × 0.25 + 64 × 1.0) per 1M = 160e-6 per request × 2M requests = $320
    assert report["api"]["cost"]["monthly_usd"]["value"] == pytest.approx(320.0)
    assert report["api"]["list_prices"]["input_per_1m"]["reference"] == "contract 7"
    assert report["host"]["price_per_hour"]["reference"] == "user flag --host-price-per-hour"


def test_slo_never_met_still_reports(cli, tmp_path):
    args = base_args(tmp_path)
    args[args.index("--bench") + 1] = str(bench_file(tmp_path, sustainable=False))
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "cannot serve" in proc.stdout and "NO-GO" in proc.stdout
    report = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())
    assert report["self_hosted"] is None and report["decision"]["verdict"] == "NO-GO"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--api": "gpt-9"}, "unknown API model 'gpt-9'; known: claude-3-5-haiku"),
        ({"--host": "my-box"}, "unknown host 'my-box'; known: aws-c7a-large"),
        ({"--requests-per-month": "-5"}, "requests_per_month: Input should be greater than or equal to 0"),
        ({"--output-tokens": "0"}, "output_tokens: Input should be greater than 0"),
        ({"--requests-per-month": "inf"}, "requests_per_month: Input should be a finite number"),
        ({"--target-utilisation": "0"}, "--target-utilisation must be in (0, 1]"),
        ({"--ops-rate": "-1"}, "one-off and operations costs: rate_usd"),
        ({"--cached-input-share": "1.5"}, "cached_input_share: Input should be less than or equal to 1"),
        ({"--eng-hours": "-1"}, "one-off and operations costs: engineering_hours"),
        ({"--pricing": "reserved_1y"}, "no reserved_1y price known for this host"),
        ({"--model": "smollm2-360m-instruct"}, "bench report is for model 'smollm2-135m-instruct'"),
        ({"--deployment": "sometimes"}, "unknown deployment 'sometimes'"),
        ({"--host-price-per-hour": "1"}, "give exactly one of --host NAME or --host-price-per-hour"),
        ({"--escalation-share": "1.2"}, "--escalation-share must be in [0, 1]"),
        ({"--amortise-months": "0"}, "one-off and operations costs: amortise_months"),
    ],
)
def test_bad_input_is_one_clear_error(cli, tmp_path, change, message):
    args = base_args(tmp_path)
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    fails(cli, args, message, tmp_path)


def test_missing_numbers_and_broken_reports(cli, tmp_path):
    args = base_args(tmp_path)
    i = args.index("--requests-per-month")
    fails(cli, args[:i] + args[i + 2 :], "requests_per_month is missing", tmp_path)
    broken = write_json(tmp_path / "b.json", {"stage": "bench", "model": "m"})
    args[args.index("--bench") + 1] = str(broken)
    fails(cli, args, "not a valid bench report", tmp_path)
    fails(cli, base_args(tmp_path, "--eval", str(tmp_path / "nope.json")), "nope.json: no such report", tmp_path)


def test_tokens_measured_from_prompts(cli, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "' + "x" * 400 + '"}, {"role": "assistant", '
                    '"content": "' + "y" * 40 + '"}]}\n')  # fmt: skip
    args = base_args(tmp_path)
    for flag in ("--input-tokens", "--output-tokens"):
        i = args.index(flag)
        del args[i : i + 2]
    args[args.index("--bench") + 1] = str(bench_file(tmp_path, model="no-such-model"))  # no tokenizer to load
    fails(cli, [*args, "--prompts", str(data), "--input-tokens", "5"], "either --prompts", tmp_path)
    proc = cli(*args, "--prompts", str(data))
    assert proc.returncode == 0, proc.stderr
    w = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())["workload"]
    assert (w["input_tokens"], w["output_tokens"]) == (100.0, 10.0)  # 400 / 4 and 40 / 4
    assert w["token_source"].startswith("ESTIMATED as characters/4 on 1 records")


def test_output_path_that_is_a_file_is_a_clear_error(cli, tmp_path):
    args = base_args(tmp_path)
    blocker = tmp_path / "out"
    blocker.write_text("not a dir")
    proc = cli(*args)
    assert proc.returncode == 1 and "cannot create the output directory" in proc.stderr
    assert blocker.read_text() == "not a dir"


def test_token_mix_defaults_to_the_bench_requests(cli, tmp_path):
    args = base_args(tmp_path)
    for flag in ("--input-tokens", "--output-tokens"):
        i = args.index(flag)
        del args[i : i + 2]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    w = json.loads((tmp_path / "out" / "breakeven_report.json").read_text())["workload"]
    assert (w["input_tokens"], w["output_tokens"]) == (256.0, 64.0)  # 40 × 256 / 40 and 40 × 64 / 40
    bench = args[args.index("--bench") + 1]
    assert w["token_source"] == f"measured: mean of the 40 requests of the load point in {bench}"
    shutil.rmtree(tmp_path / "out")
    fails(cli, [*args, "--input-tokens", "100"], "output_tokens is missing", tmp_path)
