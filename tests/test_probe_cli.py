"""Every bad-input case of scripts/probe_cli.py through the CLI: one error line, no traceback, nothing written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("probe_cli", Path(__file__).parent.parent / "scripts" / "probe_cli.py")
probe = importlib.util.module_from_spec(_spec)
sys.modules["probe_cli"] = probe  # dataclasses look their module up there
_spec.loader.exec_module(probe)


@pytest.mark.parametrize("case", probe.CASES, ids=[c.name for c in probe.CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(cli, case) -> None:
    assert probe.problems(case, lambda *argv, cwd: cli(*argv, cwd=cwd, timeout=300)) == []


def test_the_probe_rule_catches_a_traceback_and_a_written_file(tmp_path: Path) -> None:
    """The rule itself must be able to fail: a command that writes a file and dies with a traceback."""
    import subprocess

    def bad(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
        (cwd / "half-written").write_text("x")
        return subprocess.CompletedProcess(argv, 1, "", "Traceback (most recent call last):\nValueError: x\n")

    found = probe.problems(probe.Case("bad", ["x"], "x"), bad)
    assert found[0] == "traceback" and found[-1] == "wrote ['half-written']" and len(found) == 3
