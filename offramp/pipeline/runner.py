"""Run the stages in order, each as an `offramp <stage>` subprocess, cached by the hash of its inputs.

A stage's work dir is `runs/<name>/<stage>-<key>/`, key = hash(stage config + upstream keys). It counts as done
only once `.done` is written, last: an interrupted or failed stage (disk full included) leaves no cache entry
and runs again next time; finished stages are never redone unless their inputs change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from offramp.errors import OfframpError
from offramp.paths import read_json, write_json

console = Console(stderr=True)
DONE = ".done"


@dataclass
class Stage:
    name: str
    config: dict  # everything that changes the stage's result (pipeline/inputs.py derives it from what it reads)
    run: Callable[[Path, dict[str, Path]], None]  # (work dir, upstream work dirs by name)
    needs: list[str] = field(default_factory=list)
    optional: bool = False  # a failure is recorded but later stages still run
    skip: str | None = None  # why the stage cannot run on this config (recorded as skipped, with the reason)


@dataclass
class StageResult:
    name: str
    status: str  # done | cached | failed | skipped
    seconds: float = 0.0
    workdir: Path | None = None
    error: str | None = None


def stage_key(stage: Stage, upstream: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage.name, "config": stage.config, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class StageFailed(Exception):
    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode  # the failed command's exit code (2: not supported on this host)


def offramp_cmd(*args: str, cwd: Path | None = None, log: Path | None = None) -> None:
    """Run `offramp ARGS` as a child; its output goes to the terminal and to `log`."""
    cmd = [sys.executable, "-m", "offramp", *args]
    console.print(f"  [dim]$ offramp {' '.join(args)}[/]")
    with open(log, "a") if log else open(os.devnull, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            sys.stderr.write(line)
            logf.write(line)
            tail = (tail + [line.rstrip()])[-5:]
        if proc.wait() != 0:
            last = next((t for t in reversed(tail) if t.strip()), "(no output)")
            raise StageFailed(f"offramp {args[0]} exited {proc.returncode}: {last}", proc.returncode)


class Runner:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.results: list[StageResult] = []

    def timings(self) -> dict[str, float]:
        f = self.run_dir / "timings.json"
        return read_json(f) if f.is_file() else {}

    def execute(self, stages: list[Stage]) -> list[StageResult]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keys: dict[str, str] = {}
        dirs: dict[str, Path] = {}
        failed: set[str] = set()
        previous = self.timings()
        started = time.monotonic()
        for i, stage in enumerate(stages, 1):
            remaining = sum(previous.get(s.name, 0) for s in stages[i - 1 :])
            eta = f", ETA ~{remaining / 60:.0f} min (last run)" if remaining else ""
            console.rule(f"[bold]{i}/{len(stages)} {stage.name}[/]{eta}")
            if stage.skip:
                self.results.append(StageResult(stage.name, "skipped", error=stage.skip))
                failed.add(stage.name)
                console.print(f"  [yellow]skipped[/]: {stage.skip}")
                continue
            if blocked := [n for n in stage.needs if n in failed or n not in dirs]:
                self.results.append(StageResult(stage.name, "skipped", error=f"needs {', '.join(blocked)}"))
                failed.add(stage.name)
                console.print(f"  [yellow]skipped[/]: needs {', '.join(blocked)}")
                continue
            keys[stage.name] = stage_key(stage, {n: keys[n] for n in stage.needs})
            workdir = self.run_dir / f"{stage.name}-{keys[stage.name]}"
            if (workdir / DONE).is_file():
                done = read_json(workdir / DONE)
                self.results.append(StageResult(stage.name, "cached", done.get("seconds", 0), workdir))
                dirs[stage.name] = workdir
                console.print(f"  [green]cached[/] {workdir}")
                continue
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            t0 = time.monotonic()
            try:
                stage.run(workdir, {n: dirs[n] for n in stage.needs})
            except Exception as e:  # any failure lands in the report with its reason, the run goes on where it can
                secs = time.monotonic() - t0
                reason = str(e) if isinstance(e, StageFailed | OfframpError | OSError) else f"{type(e).__name__}: {e}"
                self.results.append(StageResult(stage.name, "failed", secs, workdir, reason))
                failed.add(stage.name)
                console.print(f"  [red]failed[/] after {secs:.0f} s: {reason}")
                if not stage.optional:
                    break
                continue
            secs = time.monotonic() - t0
            write_json(workdir / DONE, {"seconds": round(secs, 1), "key": keys[stage.name], "config": stage.config})
            dirs[stage.name] = workdir
            previous[stage.name] = secs
            self.results.append(StageResult(stage.name, "done", secs, workdir))
            console.print(f"  [green]done[/] in {secs:.0f} s")
        write_json(self.run_dir / "timings.json", previous)
        console.print(f"pipeline wall time {time.monotonic() - started:.0f} s")
        return self.results
