#!/usr/bin/env bash
# The CUDA checks that need no vLLM (tests/test_gpu.py, `gpu` marker), for a lent GPU box: torch, transformers,
# peft, accelerate installed, no vLLM, no internet, this repo copied in (not pip-installed). Results go to $OUT:
#   preflight.txt   python, torch/CUDA, nvidia-smi and which modules the tests need are present
#   gpu-junit.xml   pytest's JUnit report;  gpu-results.json  the same, one outcome per test;  pytest.log
# Exit status: pytest's; else 3 when any gpu test was skipped (no CUDA, or a module missing: reasons in the JSON).
#
# Run from the repo root:   OUT=/some/dir bash scripts/gpu_check.sh
# (device tool: command "bash scripts/gpu_check.sh", carry ["build/gpu-check"] when prepared; a few minutes)
# Optional, beforehand, on a machine with internet (carry build/gpu-check to the box, ~15 MiB):
#   bash scripts/gpu_check.sh --prepare   wheels of the small modules the box may lack (pytest, pydantic, rich,
#                                         httpx, hypothesis) for CPython 3.10-3.13; installed there only if missing.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=${GPU_CHECK_WHEELS:-$REPO/build/gpu-check/wheels}
PY=${PYTHON:-$(command -v python || command -v python3)}
NEEDED=(torch transformers peft accelerate tokenizers bitsandbytes pydantic rich httpx pytest hypothesis)
EXTRA=(pytest pydantic rich httpx hypothesis)  # modules --prepare fetches (bitsandbytes is ~60 MiB: carry it apart)
declare -A SPEC=([pytest]="pytest>=8" [pydantic]="pydantic>=2" [rich]=rich [httpx]=httpx [hypothesis]=hypothesis)

prepare() {
  mkdir -p "$WHEELS"
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download -q --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --python-version "$v" --implementation cp -d "$WHEELS" "${SPEC[@]}"
  done
  du -sh "$WHEELS"
}

missing() {  # the modules of "$@" this python cannot import
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

preflight() {
  {
    echo "python: $("$PY" -VV)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])' \
      || echo "torch: not importable"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
    echo "missing modules: $(missing "${NEEDED[@]}")"
  } 2>&1 | tee "$OUT/preflight.txt"
}

shadow_package() {  # offramp as installed (serve/, finetune/ … under offramp.*), from this checkout, no pip
  local root
  root=$(mktemp -d)/src
  mkdir -p "$root/offramp"
  ln -s "$REPO"/offramp/* "$root/offramp/"
  for d in serve quantize finetune evals; do ln -s "$REPO/$d" "$root/offramp/$d"; done
  echo "$root"
}

summarise() {  # JUnit -> one JSON line per test outcome, plus counts
  "$PY" - "$OUT/gpu-junit.xml" "$OUT/gpu-results.json" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
tests = []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
    detail = next((c.get("message") or "" for c in case if c.tag in ("failure", "error", "skipped")), "")
    tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": kind,
                  "seconds": float(case.get("time") or 0), "detail": detail[:2000]})
counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
json.dump({"counts": counts, "tests": tests}, open(sys.argv[2], "w"), indent=2)
print(json.dumps(counts))
for t in tests:
    if t["outcome"] == "skipped":
        print(f"skipped: {t['test']}: {t['detail']}")
sys.exit(3 if counts["skipped"] else 0)
EOF
}

main() {
  : "${OUT:?set OUT to the folder for the results}"
  mkdir -p "$OUT"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
  unset OFFRAMP_ACCELERATOR
  local m
  for m in $(missing "${EXTRA[@]}"); do
    [ -d "$WHEELS" ] && "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${SPEC[$m]}" || echo "no $m here"
  done
  preflight
  local opts=(-m gpu -p no:cacheprovider -rA --junitxml "$OUT/gpu-junit.xml" -c "$REPO/pyproject.toml")
  opts+=(--rootdir "$REPO" --basetemp "$(mktemp -d)/pytest")
  # tests/conftest.py imports hypothesis; test_gpu.py needs nothing from it and skips without CUDA by itself.
  [ -z "$(missing hypothesis)" ] || opts+=(--noconftest)
  local src rc=0
  src=$(shadow_package)
  # From the shadow dir: `python -m` puts the cwd first on sys.path, and the checkout's offramp/ lacks offramp.serve …
  (cd "$src" && PYTHONPATH="$src" timeout 540 "$PY" -m pytest "${opts[@]}" "$REPO/tests/test_gpu.py") \
    2>&1 | tee "$OUT/pytest.log" || rc=$?
  [ -f "$OUT/gpu-junit.xml" ] || { echo "pytest wrote no JUnit report (exit $rc)"; exit $((rc ? rc : 1)); }
  if ! summarise && [ "$rc" -eq 0 ]; then rc=3; fi
  exit "$rc"
}

if [ "${1:-}" = "--prepare" ]; then prepare; else main; fi
