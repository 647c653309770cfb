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


def test_unbuilt_stages_say_so_and_exit_2(cli):
    unbuilt = [name for name, c in ROOT.commands.items() if "not built yet" in (c.help or "")]
    for name in unbuilt:
        res = cli(name)
        assert res.returncode == 2
        assert "not built yet" in res.stderr


def test_tests_run_inside_the_runtime_env():
    assert current_env() == "runtime"
    assert lock_file("runtime").name == "runtime-cpu.lock"
