"""Fixtures for the traffic tests: a real SQLite file and a real PostgreSQL server, the same tests on both.

PostgreSQL: $OFFRAMP_TEST_POSTGRES_URL if set (each test gets its own fresh database there), else a throwaway
cluster made with initdb / pg_ctl in a temp dir on a free loopback port (as the `postgres` user when we are root).
Without PostgreSQL binaries the PostgreSQL cases skip, unless $CI is set: then they fail (.ci/run installs it).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from offramp.serve.server import free_port


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "pg_ctl").exists() and (Path(d) / "initdb").exists():
            return Path(d)
    return None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server URL (admin database `postgres`), up for the whole session."""
    if url := os.environ.get("OFFRAMP_TEST_POSTGRES_URL"):
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are not installed; .ci/run installs postgresql")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed and OFFRAMP_TEST_POSTGRES_URL not set")
    root = Path(tempfile.mkdtemp(prefix="offramp-pg-"))
    root.chmod(0o777)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    sock.chmod(0o777)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "-t", "60", "start"]
    r = subprocess.run(_as_postgres(start), capture_output=True, text=True)
    if r.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        pytest.fail(f"pg_ctl start failed: {r.stderr or r.stdout}\n{log[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def _fresh_database(server: str) -> str:
    import psycopg

    name = f"offramp_test_{uuid.uuid4().hex[:12]}"
    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = conninfo.rpartition("/")
    return f"{base}/{name}"


def _drop_database(server: str, url: str) -> None:
    import psycopg

    name = url.rpartition("/")[2]
    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store location: a SQLite file path, or a new PostgreSQL database's URL (dropped after)."""
    if request.param == "sqlite":
        yield str(tmp_path / "traffic.db")
        return
    server = request.getfixturevalue("postgres_server")
    url = _fresh_database(server)
    yield url
    _drop_database(server, url)


# --- test data: Banking77-like queries as the OpenAI Batch API takes and returns them -------------------------

SYSTEM = "Classify the banking customer query into one of the 77 intents. Answer with the intent name only."
QUERIES = [
    ("How do I activate my new card?", "activate_my_card"),
    ("My card still hasn't arrived after two weeks", "card_arrival"),
    ("What exchange rate do you use for euros?", "exchange_rate"),
    ("How do I activate my new card?", "activate_my_card"),  # an exact duplicate request
    ("Why was I charged a fee for a transfer?", "transfer_fee_charged"),
]
T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def batch_pair(d, queries=QUERIES, *, model="gpt-4o-mini", start=T0, step_s=600, prefix="req"):
    """Write a Batch API input file and its output file; return their paths and the expected usage per call."""
    inp, out = d / f"{prefix}-input.jsonl", d / f"{prefix}-output.jsonl"
    usage = []
    with inp.open("w") as fi, out.open("w") as fo:
        for i, (q, a) in enumerate(queries):
            cid = f"{prefix}-{i}"
            body = {
                "model": model,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                "temperature": 0,
                "max_tokens": 8,
            }
            fi.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}))
            fi.write("\n")
            u = {"prompt_tokens": 30 + len(q) // 4, "completion_tokens": 3 + i % 2, "cached": 0, "reasoning": 0}
            usage.append(u)
            resp = {
                "id": f"chatcmpl-{prefix}{i}",
                "object": "chat.completion",
                "created": int((start + dt.timedelta(seconds=step_s * i)).timestamp()),
                "model": f"{model}-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": u["prompt_tokens"],
                    "completion_tokens": u["completion_tokens"],
                    "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            }
            line = {
                "id": f"batch_req_{prefix}{i}",
                "custom_id": cid,
                "response": {"status_code": 200, "request_id": f"rid-{i}", "body": resp},
                "error": None,
            }
            fo.write(json.dumps(line) + "\n")
    return inp, out, usage
