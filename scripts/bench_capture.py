"""The capture proxy's added latency (issue 16: under 2 ms at p50 over a direct call), written as JSON.

One run: the fake OpenAI API (tests/fake_openai.py, a real HTTP server on loopback) answers both paths; `offramp
capture` runs as its own process (`python -m offramp capture`, as deployed) with a SQLite store on local disk
(WAL, synchronous=FULL: one fsync per call, committed before the answer leaves). Calls are sequential
(concurrency 1) and interleaved (direct, proxied, proxied without recording), N rounds after a warm-up, so that
every path sees the same box load. Added latency = proxied - direct, at p50 and p99 of each path and of the paired
differences. The third path, the same proxy with `Store.record` replaced by a no-op (for this measurement only),
splits the added latency into the proxy stack (FastAPI, uvicorn, httpx) and the durable write; the fourth, a bare
passthrough on the same stack (BARE below), is the floor any proxy built on it adds on this machine.

    python scripts/bench_capture.py --calls 500 --out results/capture
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from offramp.hardware import hardware_info, simd_flags
from offramp.paths import write_json
from offramp.reports import now_iso
from offramp.serve.server import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402  (the tests' fake API, on purpose: the same server they drive)

BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Classify the banking customer query into one of the 77 intents."},
        {"role": "user", "content": "My card still hasn't arrived after two weeks"},
    ],
    "temperature": 0,
    "max_tokens": 8,
}


# The proxy with its durable write switched off: only to split the overhead, never a mode of offramp capture.
NO_RECORD = (
    "import sys; from offramp.traffic import store; store.Store.record = lambda self, call: True; "
    "from offramp.cli import main; sys.argv = ['offramp', *sys.argv[1:]]; main()"
)


# The floor: the same stack (uvicorn, Starlette, one httpx.AsyncClient) forwarding the body and nothing else; what
# any Python proxy on this stack adds here, so the proxy's own code is the difference above it.
BARE = """
import sys, httpx, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
upstream, port = sys.argv[1], int(sys.argv[2])
client = httpx.AsyncClient(timeout=30)
async def forward(request):
    r = await client.post(upstream + "/chat/completions", content=await request.body(),
                          headers={"content-type": "application/json"})
    return Response(r.content, status_code=r.status_code, media_type="application/json")
async def health(request):
    return Response("ok")
routes = [Route("/v1/chat/completions", forward, methods=["POST"]), Route("/health", health)]
uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def start_bare(upstream: str, port: int) -> subprocess.Popen:
    from offramp.envs import ensure_env

    cmd = [str(ensure_env("runtime", quiet=True)), "-c", BARE, upstream, str(port)]
    return _started(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), port)


def start_proxy(upstream: str, store: Path, port: int, record: bool = True) -> subprocess.Popen:
    from offramp.envs import ensure_env

    # As deployed: the core env's `offramp capture`, which re-runs itself in the runtime env. The no-record variant
    # starts in the runtime env directly: a re-run would not carry its patched Store.record (it did not, until
    # 2026-12-03, so that variant recorded too and its split read ~0 ms for the write).
    launcher = (
        [sys.executable, "-m", "offramp"] if record else [str(ensure_env("runtime", quiet=True)), "-c", NO_RECORD]
    )
    cmd = [*launcher, "capture", "--upstream", upstream, "--store", str(store)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return _started(proc, port)


def _started(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the proxy on port {port} did not start: {proc.stderr.read().decode()[-2000:]}")


def timed(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.post(url, json=BODY)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or r.json()["choices"][0]["message"]["content"] != "card_arrival":
        raise SystemExit(f"unexpected answer from {url}: {r.status_code} {r.text[:200]}")
    return ms


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def measure(n: int, warmup: int, work: Path) -> dict:
    store = work / "traffic.db"
    paths: dict[str, list[float]] = {"direct": [], "proxied": [], "proxied_no_record": [], "bare_passthrough": []}
    with FakeOpenAI(default="card_arrival") as api:
        ports = {"proxied": free_port(), "proxied_no_record": free_port(), "bare_passthrough": free_port()}
        procs = [
            start_proxy(api.url, store, ports["proxied"]),
            start_proxy(api.url, work / "unused.db", ports["proxied_no_record"], record=False),
            start_bare(api.url, ports["bare_passthrough"]),
        ]
        urls = {"direct": api.url, **{k: f"http://127.0.0.1:{p}/v1" for k, p in ports.items()}}
        try:
            with httpx.Client(timeout=30, trust_env=False) as c:
                for i in range(warmup + n):
                    for name, url in urls.items():
                        ms = timed(c, f"{url}/chat/completions")
                        if i >= warmup:
                            paths[name].append(ms)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    from offramp.traffic.store import open_store

    with open_store(store, create=False) as s:
        recorded = s.count()
    unused = work / "unused.db"
    if unused.exists():
        with open_store(unused, create=False) as s:
            if s.count():  # the no-record proxy wrote: its split would be meaningless
                raise SystemExit(f"the no-record proxy recorded {s.count()} calls: Store.record was not replaced")
    out: dict = {name: percentiles(v) for name, v in paths.items()}
    for name in ("proxied", "proxied_no_record", "bare_passthrough"):
        diffs = [p - d for p, d in zip(paths[name], paths["direct"], strict=True)]
        out[f"added_{name}" if name != "proxied" else "added"] = {
            "p50_ms": out[name]["p50_ms"] - out["direct"]["p50_ms"],
            "p99_ms": out[name]["p99_ms"] - out["direct"]["p99_ms"],
            "paired_difference": percentiles(diffs),
        }
    return {**out, "recorded": recorded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500, help="measured pairs (direct + proxied)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("results/capture"))
    busy = "2-core box shared with three other engineers' jobs (tests, builds) while this ran: figures are upper bounds"
    ap.add_argument("--note", default=busy)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offramp-bench-capture-", dir=os.environ.get("BENCH_DIR")))
    m = measure(a.calls, a.warmup, work)
    result = {
        "benchmark": "capture-overhead",
        "created_at": now_iso(),
        "hardware": hardware_info(),
        "cpu_flags": simd_flags(),
        "store": {"kind": "sqlite", "journal_mode": "WAL", "synchronous": "FULL", "dir": str(work)},
        "calls": a.calls,
        "warmup_pairs": a.warmup,
        "concurrency": 1,
        "order": "interleaved: each round is a direct call, a proxied call, a proxied call without recording, "
        "and a call through the bare passthrough (BARE: uvicorn + Starlette + httpx forwarding the body only)",
        "upstream": "tests/fake_openai.py on 127.0.0.1 (in the benchmark's process)",
        "proxy": "python -m offramp capture (its own process), SQLite store, no --redact, no --shadow",
        "target": {"added_p50_ms": 2.0, "met": m["added"]["p50_ms"] < 2.0},
        "note": a.note,
        **m,
    }
    write_json(a.out / "overhead.json", result)
    print(f"added p50 {m['added']['p50_ms']:.2f} ms, p99 {m['added']['p99_ms']:.2f} ms ({m['recorded']} recorded)")
    print(f"wrote {a.out / 'overhead.json'}")


if __name__ == "__main__":
    main()
