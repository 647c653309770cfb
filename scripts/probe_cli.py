"""Bad input to `offramp`, as data: every case must end in one error line, with no traceback and nothing written.

    python scripts/probe_cli.py [--python PY]   # a table of the cases; exits 1 if any fails

PY runs `PY -m offramp ARGV` (default: this interpreter; the runtime env's python runs each case where it fails,
the core env's where the command checks its input before moving to a stage env). Each case runs in a fresh temp
dir holding its input files only; tests/test_probe_cli.py runs every case as a pytest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_POINT = {
    "concurrency": 4, "completed": 40, "failed": 0, "duration_s": 20.0, "requests_per_s": 2.0,
    "input_tokens": 10240, "output_tokens": 2560, "input_tokens_per_s": 512.0, "output_tokens_per_s": 128.0,
    "ttft_ms": {"mean": 300.0, "p50": 280.0, "p99": 900.0}, "tpot_ms": {"mean": 25.0, "p50": 24.0, "p99": 40.0},
    "itl_ms": {"mean": 25.0, "p50": 24.0, "p99": 40.0}, "meets_slo": True,
}  # fmt: skip
BENCH = json.dumps({
    "stage": "bench", "created_at": "2026-11-24T06:00:00+00:00", "hardware": {"cpu": "x", "cpu_cores": 2, "gpus": []},
    "model": "smollm2-135m-instruct", "endpoint": "http://127.0.0.1:8000/v1",
    "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 100.0}, "points": [_POINT], "sustainable": _POINT,
})  # fmt: skip
BREAKEVEN = [
    "breakeven", "--api", "gpt-4o", "--bench", "bench_report.json", "--host", "aws-c7a-large", "--input-tokens",
    "256", "--output-tokens", "64", "--peak-to-average", "1.5", "--ops-hours-per-month", "0",
]  # fmt: skip
GOOD_CSV = "text,label\n" + "".join(f"question {i},{'ab'[i % 2]}\n" for i in range(20))
NOT_UTF8_CSV = b"text,label\nfine,a\ncaf\xe9 latte,b\n"  # latin-1 e-acute at byte offset 21
NOT_UTF8_JSONL = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "a"}]}\n'
CITED = "a=cited:banking77/gpt-4-1shot"
QUANTIZE = ["--method", "w8a8-int8-rtn", "--out", "q"]
NOT_A_STORE = {"t.db": "not a database, just text\n" * 50}
NOT_A_STORE_LINE = "--store t.db: not an offramp traffic store (the file is not a SQLite database)$"
BATCH_IN = (
    json.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    + "\n"
)
BATCH_OUT = (
    json.dumps(
        {
            "id": "b1",
            "custom_id": "zzz",
            "error": None,
            "response": {
                "status_code": 200,
                "body": {
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                },
            },
        }
    )
    + "\n"
)


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    expect: str  # a piece of the error line; a trailing $ anchors it at the line's end
    files: dict[str, str | bytes] = field(default_factory=dict)  # created first; a name ending in / is a directory
    exit_code: int = 1


CASES = [
    Case("data prepare: CSV not UTF-8", ["data", "prepare", "in.csv", "--out", "out"],
         "in.csv:3: not UTF-8 (byte offset 21", {"in.csv": NOT_UTF8_CSV}),
    Case("data prepare: JSONL not UTF-8", ["data", "prepare", "in.jsonl", "--out", "out"],
         "in.jsonl:1: not UTF-8 (byte offset 46", {"in.jsonl": NOT_UTF8_JSONL}),
    Case("data validate: not UTF-8", ["data", "validate", "in.jsonl"], "in.jsonl:1: not UTF-8",
         {"in.jsonl": NOT_UTF8_JSONL}),
    Case("eval --task: not UTF-8", ["eval", "--task", "in.jsonl", "--system", CITED],
         "in.jsonl:1: not UTF-8 (byte offset 46: invalid continuation byte); save the file as UTF-8$",
         {"in.jsonl": NOT_UTF8_JSONL}),
    Case("data validate: a dir with no splits", ["data", "validate", "d"], "d: is a directory with no train.jsonl",
         {"d/notes.txt": "x"}),
    Case("data prepare: --out in /proc", ["data", "prepare", "in.csv", "--out", "/proc/offramp-x"],
         "--out /proc/offramp-x: cannot write in /proc", {"in.csv": GOOD_CSV}),
    Case("data prepare: --out under a file", ["data", "prepare", "in.csv", "--out", "f/x"],
         "is a file, not a directory", {"in.csv": GOOD_CSV, "f": "x"}),
    Case("data prepare: --out a user's dir", ["data", "prepare", "in.csv", "--out", "mine"],
         "was not written by offramp", {"in.csv": GOOD_CSV, "mine/notes.txt": "mine"}),
    Case("models tiny: --out in /proc", ["models", "tiny", "--out", "/proc/offramp-x"], "cannot write in /proc"),
    Case("models pull: unknown model", ["models", "pull", "no-such-model"], "unknown model 'no-such-model'"),
    Case("breakeven: --out in /proc", [*BREAKEVEN, "--requests-per-month", "1000", "--out", "/proc/offramp-x"],
         "/proc/offramp-x: cannot create the output directory", {"bench_report.json": BENCH}),
    Case("breakeven: --requests-per-month inf", [*BREAKEVEN, "--requests-per-month", "inf", "--out", "out"],
         "requests_per_month: Input should be a finite number", {"bench_report.json": BENCH}),
    Case("quantize: config.json not JSON", ["quantize", "m", *QUANTIZE], "m/config.json: not a valid model config",
         {"m/config.json": "{not json"}),
    Case("quantize: config.json and no weights", ["quantize", "m", *QUANTIZE], "no weights (*.safetensors)",
         {"m/config.json": '{"model_type": "llama"}'}),
    Case("quantize: a model dir named compare", ["quantize", "compare", *QUANTIZE], "compare: no weights",
         {"compare/config.json": '{"model_type": "llama"}'}),
    Case("finetune: --data missing", ["finetune", "smollm2-135m-instruct", "--data", "nope.jsonl"],
         "nope.jsonl: no such file"),
    Case("finetune: unknown --method", ["finetune", "m", "--data", "nope.jsonl", "--method", "dora"],
         "--method must be lora or qlora, got 'dora'$"),
    Case("run: gate as a fraction", ["run", "cfg.yaml"], "0.8 looks like a fraction",
         {"cfg.yaml": "name: probe\ngate: accuracy>=0.8\n"}),
    Case("run: name escapes the runs dir", ["run", "cfg.yaml"], "must be one path component",
         {"cfg.yaml": "name: ../../x\n"}),
    Case("traffic report: corrupt store", ["traffic", "report", "--store", "t.db", "--out", "r"], NOT_A_STORE_LINE,
         NOT_A_STORE),
    Case("data from-traffic: corrupt store", ["data", "from-traffic", "--store", "t.db", "--out", "d"],
         NOT_A_STORE_LINE, NOT_A_STORE),
    Case("breakeven --traffic: corrupt store", ["breakeven", "--traffic", "t.db", "--bench", "bench_report.json",
         "--host", "aws-c7a-large"], NOT_A_STORE_LINE, {**NOT_A_STORE, "bench_report.json": BENCH}),
    Case("traffic import: mismatched Batch API pair", ["traffic", "import", "in.jsonl", "out.jsonl", "--store", "s.db"],
         "out.jsonl:1: custom_id zzz has no line in the batch input files given (mismatched pair)",
         {"in.jsonl": BATCH_IN, "out.jsonl": BATCH_OUT}),
]  # fmt: skip


def _lay_out(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


Runner = Callable[..., subprocess.CompletedProcess]


def _subprocess_runner(python: str) -> Runner:
    def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "offramp", *argv], capture_output=True, text=True, cwd=cwd, timeout=600)

    return run


def _matches(line: str, expect: str) -> bool:
    return line.endswith(expect[:-1]) if expect.endswith("$") else expect in line


def problems(case: Case, run: Runner) -> list[str]:
    """What is wrong with `case` as `run(*argv, cwd=dir)` runs it; empty when it holds."""
    with tempfile.TemporaryDirectory(prefix="offramp-probe-") as tmp:
        root = Path(tmp)
        _lay_out(root, case.files)
        before = _tree(root)
        proc = run(*case.argv, cwd=root)
        new = sorted(_tree(root) - before)
    lines = proc.stderr.strip().splitlines()
    out = []
    if proc.returncode != case.exit_code:
        out.append(f"exit {proc.returncode}, expected {case.exit_code}")
    if "Traceback" in proc.stderr:
        out.append("traceback")
    if not lines or not lines[0].startswith("offramp: error: ") or any(not x.startswith("hint:") for x in lines[1:]):
        out.append(f"stderr is not one error line: {proc.stderr.strip()[-300:]!r}")
    elif not _matches(lines[0], case.expect):
        out.append(f"error line lacks {case.expect!r}: {lines[0]!r}")
    if new:
        out.append(f"wrote {new[:3]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs `-m offramp`")
    run = _subprocess_runner(ap.parse_args().python)
    failed = 0
    for case in CASES:
        found = problems(case, run)
        failed += bool(found)
        print(f"{'FAIL' if found else 'ok':4}  {case.name:40}  {'; '.join(found)}")
    print(f"{len(CASES) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
