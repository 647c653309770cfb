"""The helpers several stages share: CPU facts (offramp.hardware), safetensors headers (quantize/measure.py, read
by serve's adapter check too), vLLM's log tail and /metrics (serve/), process-group members (serve/server.py)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from offramp import hardware
from offramp.errors import OfframpError
from offramp.hardware import cpu_has_avx512
from offramp.quantize.measure import linear_prefixes, tensor_bytes, tensor_specs
from offramp.serve import bench, server
from offramp.serve.server import VllmServer, check_adapter, cpu_env_defaults, live_group_members


# ---- CPU -------------------------------------------------------------------------------------------------------
def test_cpu_flags_and_cores_are_this_machines():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags_line = next(line for line in f if line.startswith("flags"))
    assert hardware.cpu_flags() == frozenset(flags_line.split(":", 1)[1].split())
    assert cpu_has_avx512() == (" avx512f " in f"{flags_line.rstrip()} ")
    assert hardware.cpu_cores() == len(os.sched_getaffinity(0)) == hardware.hardware_info()["cpu_cores"]


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [({"flags": "fpu avx2 avx512f"}, False), ({"flags": "fpu avx512_bf16"}, True), ({"flags": "amx_bf16"}, True)]
    + [({"model name": "no flags line"}, False), (None, True)],  # no /proc/cpuinfo: leave vLLM's bf16 alone
)
def test_native_bf16_from_the_cpu_flags(monkeypatch, cpuinfo, native):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: cpuinfo)
    assert server.cpu_has_native_bf16() is native
    assert server.cpu_dtype_args([]) == ([] if native else ["--dtype", "float32"])


@pytest.mark.parametrize(
    ("purpose", "where", "native_bf16", "dtype"),
    [("train", "cuda", False, "bfloat16"), ("train", "cpu", True, "float32"), ("eval", "cuda", False, "auto")]
    + [("eval", "cpu", True, "float32"), ("serve", "cuda", False, "auto"), ("serve", "cpu", True, "auto")]
    + [("serve", "cpu", False, "float32"), ("quantize", "cpu", False, "bfloat16")]
    + [("quantize", "cuda", True, "bfloat16")],
)
def test_one_place_decides_the_dtype_per_purpose_and_device(purpose, where, native_bf16, dtype):
    assert hardware.model_dtype(purpose, where, native_bf16=native_bf16) == dtype


def test_the_accelerator_follows_nvidia_smi_unless_forced(monkeypatch):
    monkeypatch.delenv("OFFRAMP_ACCELERATOR", raising=False)
    monkeypatch.setattr(hardware, "has_cuda", lambda: True)
    assert hardware.accelerator() == "cuda"
    monkeypatch.setenv("OFFRAMP_ACCELERATOR", "cpu")
    assert hardware.accelerator() == "cpu"
    monkeypatch.setattr(hardware, "has_cuda", lambda: False)
    monkeypatch.setenv("OFFRAMP_ACCELERATOR", "bogus")
    assert hardware.accelerator() == "cpu"


def test_no_stage_decides_the_device_or_reads_the_cpu_itself():
    """CUDA is detected in one place (offramp.hardware: accelerator, torch_sees_cuda) and /proc/cpuinfo read once,
    also by the tests and scripts."""
    root = Path(__file__).resolve().parents[1]
    offenders = [
        f"{path.relative_to(root)}: {needle}"
        for folder in ("evals", "finetune", "quantize", "serve", "offramp", "scripts", "tests")
        for path in (root / folder).rglob("*.py")
        if path.name not in ("hardware.py", Path(__file__).name)
        for needle in ("cuda.is_available", "/proc/cpuinfo", "sched_getaffinity", "os.cpu_count()")
        if needle in "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    ]
    assert offenders == []


@pytest.mark.parametrize(("cores", "reserved"), [(1, "0"), (2, "0"), (4, None)])
def test_vllm_reserves_no_core_on_a_small_affinity_mask(monkeypatch, cores, reserved):
    monkeypatch.setattr(server, "cpu_cores", lambda: cores)
    assert cpu_env_defaults({"VLLM_CPU_KVCACHE_SPACE": "1"}).get("VLLM_CPU_NUM_OF_RESERVED_CPU") == reserved


# ---- safetensors headers -----------------------------------------------------------------------------------------
def _header_sizes(path: Path) -> dict[str, int]:
    """Bytes per tensor from the header's data offsets, read by hand: what the helper must agree with."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def test_tensor_specs_and_bytes_match_the_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 4, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.qweight": torch.zeros(2, 8, dtype=torch.int32),
        "model.layers.0.input_layernorm.weight": torch.zeros(4, dtype=torch.float32),
        "model.embed_tokens.weight": torch.zeros(16, 4, dtype=torch.float16),
        "scale": torch.zeros((), dtype=torch.float32),
        "mask": torch.zeros(3, dtype=torch.uint8),
    }
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    specs = tensor_specs(tmp_path / "model.safetensors")
    assert specs["model.layers.0.self_attn.q_proj.weight"] == ("BF16", [8, 4]) and specs["scale"] == ("F32", [])
    assert tensor_bytes(tmp_path) == _header_sizes(tmp_path / "model.safetensors")
    assert linear_prefixes(tmp_path) == {"model.layers.0.self_attn.q_proj"}
    with pytest.raises(OfframpError, match="no .safetensors files"):
        tensor_bytes(tmp_path / "nothing")


def test_adapter_check_reads_the_lora_shapes(tmp_path):
    from safetensors.numpy import save_file

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text(json.dumps({"hidden_size": 8, "num_attention_heads": 2}))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    weights = {key.format("A"): np.zeros((4, 8), np.float32), key.format("B"): np.zeros((8, 4), np.float32)}
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    check_adapter(adapter, str(base))  # fits
    save_file({**weights, key.format("A"): np.zeros((4, 6), np.float32)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(OfframpError, match="has a dimension of 6, the base model's q_proj needs 8"):
        check_adapter(adapter, str(base))


# ---- vLLM's log and /metrics -------------------------------------------------------------------------------------
NANOBIND_NOISE = """\
nanobind: leaked 3 instances!
 - leaked instance 0x5581d0c0 of type "xgrammar.xgrammar_bindings.GrammarCompiler"
 - ... skipped remainder
nanobind: leaked 2 types!
 - leaked type "xgrammar.xgrammar_bindings.TokenizerInfo"
nanobind: leaked 12 functions!
 - leaked function "__init__"
nanobind: this is likely caused by a reference counting issue in the binding code.
See https://nanobind.readthedocs.io/en/latest/refleaks.html for a description of this issue.
"""


def test_log_tails_show_the_error_not_nanobinds_leak_report(tmp_path):
    log = tmp_path / "vllm_bench.log"
    error = "INFO starting\nTraceback (most recent call last):\n\n  File x\nValueError: bad port\n"
    log.write_text(error + NANOBIND_NOISE)
    want = ["Traceback (most recent call last):", "  File x", "ValueError: bad port"]
    assert server.log_tail(log, 3) == want
    assert VllmServer("m", log_path=log).log_tail(3) == want
    assert bench._tail(log, 3) == "last lines of vllm_bench.log:\n  " + "\n  ".join(want)


def test_scrape_metrics_sums_the_counters_over_their_labels():
    registry = CollectorRegistry()
    queries = Counter("vllm:prefix_cache_queries", "q", ["engine", "model_name"], registry=registry)
    hits = Counter("vllm:prefix_cache_hits", "h", ["engine"], registry=registry)
    Counter("vllm:prefix_cache_queries_other", "not ours", registry=registry).inc(1000)
    queries.labels("0", "m").inc(120)
    queries.labels("1", "m").inc(30)
    hits.labels("0").inc(45)
    body = generate_latest(registry)

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        got = bench.scrape_metrics(f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got["vllm:prefix_cache_queries_total"] == 150.0 and got["vllm:prefix_cache_hits_total"] == 45.0
    assert got["vllm:request_success_total"] == 0.0 and set(got) == set(bench.COUNTERS)
    assert bench.hit_rate(got) == pytest.approx(0.3)


# ---- process groups --------------------------------------------------------------------------------------------
def test_live_group_members_are_the_groups_running_processes():
    # the leader starts a child and never reaps it: killed, the child stays a zombie until the leader goes
    code = "import subprocess, time; print(subprocess.Popen(['sleep', '30']).pid, flush=True); time.sleep(30)"
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        assert sorted(live_group_members(leader.pid)) == sorted([leader.pid, child])
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert live_group_members(leader.pid) == [leader.pid]  # the zombie does not count
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert live_group_members(leader.pid) == []


def test_stop_group_ends_every_process_of_the_group_even_one_that_ignores_sigterm():
    # the pipeline and VllmServer share this; a worker left behind keeps serving on the port
    script = "trap '' TERM; sleep 60 & sleep 60 & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(live_group_members(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(live_group_members(proc.pid)) == 3
    server.stop_group(proc, timeout=1)
    assert live_group_members(proc.pid) == [] and proc.returncode is not None


def test_a_spawned_server_dies_with_the_process_that_spawned_it():
    """A pipeline killed with SIGKILL runs no cleanup: its servers must not stay behind holding ports and cores."""
    code = (
        "import subprocess, sys; from offramp.serve.server import spawn_group; "
        "print(spawn_group(['sleep', '60'], stdout=subprocess.DEVNULL).pid, flush=True); sys.stdin.read()"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert os.getpgid(child) == child and psutil.Process(child).is_running()  # its own group, for stop_group
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while live_group_members(child):  # its own group, so the group is the server and what it started
        assert time.monotonic() < deadline, "the spawned server outlived its parent"
        time.sleep(0.05)


def test_wait_until_healthy_names_a_server_that_exits_with_its_log(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('bind failed'); sys.exit(3)"])
    with pytest.raises(OfframpError, match="offramp serve base exited with code 3 while starting; tail: bind failed"):
        server.wait_until_healthy(proc, f"http://127.0.0.1:{server.free_port()}", 30, "offramp serve base",
                                  lambda: "tail: bind failed")  # fmt: skip
