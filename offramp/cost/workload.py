"""The workload to be priced: how much traffic, what token mix, how peaky, how latency-bound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from offramp.errors import OfframpError

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    p99_ttft_s: float | None = Field(default=None, gt=0)
    p99_tpot_ms: float | None = Field(default=None, gt=0)


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    requests_per_month: float = Field(ge=0)
    input_tokens: float = Field(gt=0, description="mean input tokens per request")
    output_tokens: float = Field(gt=0, description="mean output tokens per request")
    cached_input_share: float = Field(default=0.0, ge=0, le=1, description="share of input hitting the prompt cache")
    cache_write_share: float | None = Field(
        default=None, ge=0, le=1, description="share of API input billed as cache writes; None: all not read"
    )
    api_input_tokens: float | None = Field(
        default=None, gt=0, description="mean input tokens of the API's own prompt; None: input_tokens"
    )
    api_token_source: str | None = None
    reasoning_tokens: float = Field(default=0.0, ge=0, description="hidden reasoning tokens per API request")
    reasoning_source: str = "none counted"
    peak_to_average: float = Field(default=2.0, ge=1, description="peak request rate / monthly average rate")
    slo: Slo | None = None  # None: take the SLO the bench report was run with
    batch_tolerant: bool = False  # answers may take up to 24 h: the batch API is allowed
    token_source: str = "stated by the user"
    provenance: dict[str, str] = Field(
        default_factory=dict, description="field -> where its value comes from, where not stated by the user"
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> Workload:
        if self.cache_write_share is not None and self.cached_input_share + self.cache_write_share > 1:
            raise ValueError("cached_input_share + cache_write_share exceed 1")
        return self

    def with_volume(self, requests_per_month: float) -> Workload:
        return self.model_copy(update={"requests_per_month": requests_per_month})


def _validation_error(where: str, e: ValidationError) -> OfframpError:
    first = e.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "workload"
    if first["type"] == "missing":
        flag = "--" + key.replace("_", "-")
        return OfframpError(f"{where}: {key} is missing: put it in the workload file or pass {flag}")
    return OfframpError(f"{where}: {key}: {first['msg']}")


def build_workload(fields: dict[str, Any], where: str = "workload") -> Workload:
    try:
        return Workload.model_validate(fields)
    except ValidationError as e:
        raise _validation_error(where, e) from None


def load_workload(
    path: Path | None, overrides: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
) -> Workload:
    """A workload YAML file (if any); command-line values (not None) win over it, `defaults` fill what is left."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise OfframpError(f"{path}: cannot read workload ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise OfframpError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise OfframpError(f"{path}: a workload file is a mapping of fields")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if defaults and not {"input_tokens", "output_tokens"} & data.keys():
        data = {**defaults, **data}
    return build_workload(data, str(path) if path else "workload flags")


def adapter_base(ref: str | Path) -> str | None:
    """The base model a LoRA adapter dir names (peft's adapter_config.json), or None for anything else."""
    adapter = Path(ref) / "adapter_config.json"
    if not adapter.is_file() or (Path(ref) / "config.json").is_file():
        return None
    return json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") or None


def _tokenizer(model_ref: str | None) -> tuple[Any, str] | tuple[None, str]:
    if model_ref is None:
        return None, "no model to take a tokenizer from"
    from offramp.store import resolve_model

    model_ref = adapter_base(model_ref) or model_ref  # a LoRA adapter dir holds no tokenizer: its base's
    try:
        path = resolve_model(model_ref)
    except OfframpError as e:
        return None, f"tokenizer of {model_ref!r} unavailable: {e}"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed in this environment"
    try:
        return AutoTokenizer.from_pretrained(path), model_ref
    except (OSError, ValueError) as e:
        return None, f"tokenizer of {model_ref!r} unavailable: {str(e).splitlines()[0]}"


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def measure_tokens(path: Path, model_ref: str | None) -> dict[str, Any]:
    """Mean input and output tokens per request of a chat JSONL file.

    Counted with the model's own tokenizer and chat template when transformers can load it; otherwise
    estimated as characters / 4, and labelled so. The API vendor's tokenizer counts somewhat differently;
    the same counts are used for both sides.
    """
    from offramp.data import load_chat_jsonl

    records = load_chat_jsonl(Path(path), need_assistant=False)
    answered = [r for r in records if r["messages"][-1]["role"] == "assistant"]
    if not answered:
        raise OfframpError(f"{path}: no record ends with an assistant answer, so output length is unknown")
    tok, why = _tokenizer(model_ref)
    ins, outs = [], []
    for r in answered:
        prompt, answer = r["messages"][:-1], r["messages"][-1]["content"]
        if tok is not None:
            ins.append(len(_ids(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))))
            outs.append(len(_ids(tok(answer, add_special_tokens=False))) + 1)  # + end-of-turn token
        else:
            ins.append(sum(len(m["content"]) for m in prompt) / CHARS_PER_TOKEN)
            outs.append(len(answer) / CHARS_PER_TOKEN)
    source = (
        f"measured on {len(answered)} records of {path} with the tokenizer of {why}"
        if tok is not None
        else f"ESTIMATED as characters/4 on {len(answered)} records of {path} ({why})"
    )
    return {
        "input_tokens": max(sum(ins) / len(ins), 1.0),
        "output_tokens": max(sum(outs) / len(outs), 1.0),
        "token_source": source,
    }


def _common_prefix(seqs: list[list]) -> int:
    first = seqs[0]
    n = len(first)
    for seq in seqs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], seq, strict=False)) if a != b), min(n, len(seq)))
    return n


def measure_api_prompts(path: Path, model_ref: str | None) -> dict[str, Any]:
    """Mean input tokens of the prompts the API is sent, and the share every prompt shares as a prefix (what the
    vendor's prompt cache can reuse). Counted like `measure_tokens`; the answers are not needed."""
    from offramp.data import load_chat_jsonl

    records = load_chat_jsonl(Path(path), need_assistant=False)
    prompts = [r["messages"][:-1] if r["messages"][-1]["role"] == "assistant" else r["messages"] for r in records]
    tok, why = _tokenizer(model_ref)
    if tok is not None:
        seqs = [_ids(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)) for p in prompts]
        how = f"the tokenizer of {why} (the vendor's counts somewhat differently)"
    else:
        seqs = [list(" ".join(m["content"] for m in p)) for p in prompts]
        how = f"ESTIMATED as characters/4 ({why})"
    scale = 1 if tok is not None else 1 / CHARS_PER_TOKEN
    mean = max(sum(len(x) for x in seqs) / len(seqs) * scale, 1.0)
    prefix = _common_prefix(seqs) * scale if len(seqs) > 1 else 0.0
    return {
        "api_input_tokens": mean,
        "api_shared_prefix_share": min(prefix / mean, 1.0),
        "api_token_source": f"measured on the {len(seqs)} API prompts of {path} with {how}; "
        f"{prefix:,.0f} tokens are a prefix every prompt shares",
    }
