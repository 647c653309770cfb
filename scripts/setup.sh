#!/usr/bin/env bash
# Set up offramp from a fresh checkout: the light core env (.venv: the CLI, config, reports, cost model)
# and the locked runtime env (torch CPU/CUDA, vLLM, transformers, peft, lm-eval) that heavy stages run in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${OFFRAMP_PYTHON:-python3}
if [ ! -x .venv/bin/uv ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
fi
.venv/bin/uv pip install -q --compile-bytecode -p .venv/bin/python -e ".[dev]"  # .pyc: see offramp/envs.py
.venv/bin/offramp setup runtime
