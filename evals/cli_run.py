"""The body of `offramp eval`, run inside the runtime env: each system, then the report, written atomically."""

from __future__ import annotations

import sys
from pathlib import Path

from offramp.evals.api import ApiCache
from offramp.evals.report import build_body, print_table
from offramp.evals.run import Answers, run_endpoint, run_local
from offramp.evals.tasks import EvalTask
from offramp.expressions import Gate
from offramp.paths import home
from offramp.reports import write_report
from offramp.systems import EndpointSystem, LocalSystem, System

REPORT = "eval_report.json"


def run_eval(
    task: EvalTask,
    systems: list[System],
    *,
    gate: Gate | None,
    candidate: str,
    baseline: str | None,
    out: Path,
    seed: int = 0,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    max_attempts: int = 6,
    concurrency: int = 8,
) -> dict:
    cache = ApiCache(cache_dir or home() / "api-cache") if use_cache else None
    answers: dict[str, Answers] = {}
    for s in systems:
        if isinstance(s, LocalSystem | EndpointSystem):
            print(f"offramp eval: running {s.name} ({s.spec}) on {len(task.queries)} queries", file=sys.stderr)
        if isinstance(s, LocalSystem):
            answers[s.name] = run_local(s, task, batch_size=batch_size)
        elif isinstance(s, EndpointSystem):
            endpoint_cache = cache if s.answers_cacheable else None
            answers[s.name] = run_endpoint(
                s, task, cache=endpoint_cache, max_attempts=max_attempts, concurrency=concurrency
            )
    body = build_body(task, systems, answers, gate=gate, candidate=candidate, baseline=baseline, seed=seed)
    # checked against EvalReport, then one file written atomically (temp + rename; `out` is made only then); other
    # files in `out` (e.g. a pipeline's stage.log) are kept
    report = write_report(Path(out) / REPORT, "eval", body)
    print_table(body, str(Path(out) / REPORT))
    return report
