#!/usr/bin/env bash
# Run the test suite inside the runtime env (tests start real vLLM servers and train real adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/offramp ] || bash scripts/setup.sh
PY=$(.venv/bin/offramp setup --print-python runtime)
exec "$PY" -m pytest "$@"
