"""offramp.envs.ensure_env with a real uv on a one-package lock: it builds the env with compiled bytecode,
re-syncs when the lock changes, and compiles once an env that was stamped before bytecode was part of the stamp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offramp import envs


@pytest.fixture
def tiny_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lock = tmp_path / "tiny.lock"
    lock.write_text("six==1.17.0\n")
    monkeypatch.setenv("OFFRAMP_ENVS", str(tmp_path / "envs"))
    monkeypatch.setattr(envs, "lock_file", lambda name: lock)
    return lock


def _site(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python3*/site-packages"))


def _installed(python: Path) -> set[str]:
    return {p.name.split("-")[0].lower() for p in _site(python).glob("*.dist-info")}


def test_a_new_env_has_bytecode_and_a_changed_lock_resyncs(tiny_env: Path) -> None:
    python = envs.ensure_env("tiny", quiet=True)
    assert python.is_file() and {"six", "offramp"} <= _installed(python)
    assert list((_site(python) / "__pycache__").glob("six.*.pyc")), "uv compiled no bytecode"
    stamp = json.loads((python.parent.parent / envs.STAMP).read_text())
    assert stamp["bytecode"] is True and stamp["lock_sha256"] == envs._sha(tiny_env)

    tiny_env.write_text("six==1.17.0\nidna==3.20\n")
    assert envs.ensure_env("tiny", quiet=True) == python
    assert "idna" in _installed(python)  # the new lock line was installed: the env re-synced
    assert json.loads((python.parent.parent / envs.STAMP).read_text())["lock_sha256"] == envs._sha(tiny_env)


def test_an_env_stamped_before_bytecode_is_compiled_once(tiny_env: Path) -> None:
    python = envs.ensure_env("tiny", quiet=True)
    root, cache = python.parent.parent, _site(python) / "__pycache__"
    stamp = json.loads((root / envs.STAMP).read_text())
    (root / envs.STAMP).write_text(json.dumps({k: v for k, v in stamp.items() if k != "bytecode"}))
    for pyc in cache.glob("six.*.pyc"):
        pyc.unlink()
    envs.ensure_env("tiny", quiet=True)
    assert list(cache.glob("six.*.pyc")), "an env stamped without bytecode was not compiled"
    assert json.loads((root / envs.STAMP).read_text())["bytecode"] is True
