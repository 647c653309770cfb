"""The README's traffic example: Banking77 replayed through `offramp capture` against the fake API, then reported.

One run, written under --out (default results/traffic-demo):
- the fake OpenAI API (tests/fake_openai.py, a real HTTP server on loopback) plays the paid API: it answers each
  query with its Banking77 intent (a teacher that is always right) and reports usage counted by SmolLM2's
  tokenizer over the chat-templated prompt (a real BPE, not OpenAI's o200k: counts differ by a few per cent), with
  no cached tokens (OpenAI caches prompts of 1,024 tokens or more; these are shorter);
- `offramp capture` (its own process, as deployed) sits in front of it with a SQLite store;
- the official `openai` client sends every query as a team's service would: model gpt-4o-mini, the same system
  prompt on every call (the label list: the shared prefix a prompt cache reuses), tag `support/intent`, a few
  calls in flight at a time, 1 in 10 streamed;
- `offramp traffic report` writes report.json + report.html; headless Chromium renders report.png.

    .venv/bin/offramp setup runtime
    ~/.cache/offramp/envs/runtime/bin/python scripts/traffic_demo.py --per-label 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from bench_capture import start_proxy  # scripts/ is on sys.path when this runs as a script
from screenshot_report import screenshot

from offramp.data import builtin_splits, per_label_subset
from offramp.hardware import cpu_flags, hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso
from offramp.serve.server import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402  (the tests' fake API, on purpose)

TAG = "support/intent"


def system_prompt(labels: list[str]) -> str:
    return "You route customer messages for a bank. Answer with exactly one intent from this list:\n" + "\n".join(
        labels
    )


def token_counter(model: str):
    from transformers import AutoTokenizer

    from offramp.store import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))

    def count(messages: list[dict], answer: str) -> tuple[int, int]:
        prompt = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        return len(prompt["input_ids"]), len(tok.encode(answer, add_special_tokens=False))

    return count


def replay(base_url: str, queries: list[str], system: str, concurrency: int) -> int:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, default_headers={"X-Offramp-Tag": TAG})

    def ask(i_q: tuple[int, str]) -> str:
        i, q = i_q
        messages = [{"role": "system", "content": system}, {"role": "user", "content": q}]
        if i % 10 == 9:
            chunks = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                temperature=0,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0, max_tokens=16)
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(1 for a in pool.map(ask, enumerate(queries)) if a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-label", type=int, default=20, help="Banking77 train queries per intent to replay")
    ap.add_argument("--test-per-label", type=int, default=3, help="and test queries per intent, after them")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/traffic-demo"))
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="counts the fake API's usage")
    args = ap.parse_args()
    train, test, labels = builtin_splits("banking77")
    examples = per_label_subset(train, args.per_label, 0) + per_label_subset(test, args.test_per_label, 0)
    answers = {e.text: e.label for e in examples}
    work = Path(tempfile.mkdtemp(prefix="offramp-traffic-demo-"))
    store = work / "traffic.db"
    count = token_counter(args.tokenizer)
    details = {"cached_tokens": 0, "reasoning_tokens": 0}  # what gpt-4o-mini reports for prompts under 1,024
    with FakeOpenAI(
        answers=answers, default="unknown", model="gpt-4o-mini", count_tokens=count, usage_details=details
    ) as api:
        port = free_port()
        proxy = start_proxy(api.url, store, port)
        try:
            queries = [e.text for e in examples]
            answered = replay(f"http://127.0.0.1:{port}/v1", queries, system_prompt(labels), args.concurrency)
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
    offramp = [sys.executable, "-m", "offramp"]
    report_dir = work / "report"
    subprocess.run([*offramp, "traffic", "report", "--store", str(store), "--out", str(report_dir)], check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    body = json.loads((report_dir / "report.json").read_text())
    write_json(args.out / "report.json", body)
    (args.out / "report.html").write_text((report_dir / "report.html").read_text())
    screenshot(args.out / "report.html", args.out / "report.png", height=1800)
    write_json(
        args.out / "demo.json",
        {
            "created_at": now_iso(),
            "source": "measured: scripts/traffic_demo.py (fake API answering each query's Banking77 intent)",
            "hardware": hardware_info(),
            "cpu_flags": cpu_flags(),
            "calls_sent": len(examples),
            "calls_answered": answered,
            "calls_reaching_the_fake_api": api.completions,
            "store": "SQLite (WAL, synchronous=FULL), deleted after the run",
            "usage_note": f"the fake API's usage: {args.tokenizer}'s tokenizer over the chat-templated prompt",
            "teacher": "the fake API answers each query's Banking77 intent (always right)",
        },
    )
    print(f"wrote {args.out}: {answered} of {len(examples)} calls answered and recorded; store kept in {store}")


if __name__ == "__main__":
    main()
