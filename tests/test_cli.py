import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from offramp.cli import app
from offramp.envs import current_env, lock_file

ROOT = typer.main.get_command(app)
COMMANDS = sorted(ROOT.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_stage_has_help(cli, command):
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


def test_tests_run_inside_the_runtime_env():
    assert current_env() == "runtime"
    assert lock_file("runtime").name == "runtime-cpu.lock"


@pytest.mark.slow
def test_the_runtime_env_builds_a_stage_env_with_no_uv_of_its_own(tmp_path: Path) -> None:
    """uv lives in the core env only; a stage in the runtime env that needs the `gptq` env must still build it
    (it failed on every fresh machine: "uv is needed to create stage environments")."""
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "uv").exists())
    env = {**os.environ, "OFFRAMP_ENVS": str(tmp_path / "envs"), "PATH": path}
    build = "from offramp.envs import ensure_env; print(ensure_env('gptq', quiet=True))"
    res = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    python = Path(res.stdout.strip().splitlines()[-1])
    assert python.is_relative_to(tmp_path / "envs" / "gptq")
    probe = "import importlib.metadata as m, offramp.envs as e; print(e.current_env(), m.version('gptqmodel'))"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, version = out.stdout.split()
    assert name == "gptq" and version


def test_the_bitsandbytes_kernels_hub_notice_alone_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    """bitsandbytes logs a warning on every import (peft imports it) when the optional `kernels` package is absent;
    main() drops exactly that message, and the logger's other warnings still show (#15.9)."""
    import logging

    from offramp.cli import silence_known_noise

    silence_known_noise()
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        log.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
