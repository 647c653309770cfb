"""Shared fixtures: a real SmolLM2 pulled once per session, the tiny random Llama, and the CLI as a subprocess.

Tests run inside the runtime environment (scripts/test.sh). Set OFFRAMP_TEST_STORE to reuse a model store
between runs (default: a fresh temp dir, as in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("OFFRAMP_TEST_STORE") or tmp_path_factory.mktemp("store"))
    os.environ["OFFRAMP_STORE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2(store: Path) -> Path:
    """The real SmolLM2-135M-Instruct, converted from the PyPI wheel's GGUF into the session store."""
    from offramp.store import pull

    return pull("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from offramp.tiny import build_tiny_llama

    return build_tiny_llama(smollm2, tmp_path_factory.mktemp("tiny") / "tiny-random-llama")


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `offramp ARGS` in a subprocess of this interpreter; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "offramp", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from offramp.hardware import has_cuda

    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
