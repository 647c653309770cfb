"""Fine-tuning recipes: a YAML file of hyper-parameters, per-hardware overrides, then the command-line flags."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from offramp.errors import OfframpError

BUILTIN = ("default", "full", "classify")


class Recipe(BaseModel):
    """Every hyper-parameter, declared once: the recipe YAML keys, the `KEY=VALUE` overrides of `offramp finetune`
    and (for the few common ones) its flags all come from these fields."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    head: Literal["lm", "classify"] = Field(
        "lm", description="lm (next-token loss on the answer) or classify (a label head over labels.json)"
    )
    method: Literal["lora", "qlora"] = Field("lora", description="lora or qlora (4-bit base, needs bitsandbytes)")
    rank: int = Field(16, ge=1, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: str | list[str] = Field(
        "all-linear", description="all-linear (every linear layer but the output head, peft's shortcut) or names"
    )
    epochs: float = Field(1.0, gt=0, description="passes over the data")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    batch_size: int = Field(16, ge=1, description="sequences per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_len: int = Field(128, ge=8, description="longest sequence in tokens; longer records are dropped")
    warmup: float = Field(0.05, ge=0, description="warm-up: a fraction of the steps when < 1, else a step count")
    scheduler: str = Field("cosine", description="transformers' lr_scheduler_type (cosine, linear, constant …)")
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    save_steps: int | None = Field(None, ge=1, description="checkpoint interval; default about 10 per run")
    logging_steps: int | None = Field(None, ge=1)
    # Overrides by accelerator ("cpu" / "cuda"), applied before the command-line ones.
    per_hardware: dict[Literal["cpu", "cuda"], dict[str, Any]] = {}

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_module_names(cls, value: Any) -> Any:
        """`q_proj,v_proj` (as a flag or `target_modules=…` gives it) is two module names."""
        if isinstance(value, str) and "," in value:
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    def hyperparameters(self) -> dict[str, Any]:
        return self.model_dump(exclude={"per_hardware", "description"})


def recipe_path(ref: str) -> Path:
    if ref in BUILTIN:
        return Path(str(resources.files("offramp") / "configs" / f"finetune-{ref}.yaml"))
    path = Path(ref).expanduser()
    if not path.is_file():
        raise OfframpError(f"recipe {ref!r} is neither a built-in ({', '.join(BUILTIN)}) nor a YAML file")
    return path


OVERRIDABLE = tuple(k for k in Recipe.model_fields if k not in ("name", "description", "per_hardware"))


def flag_help(key: str) -> str:
    """A common flag's help: its Recipe field's description."""
    return Recipe.model_fields[key].description or key


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """torchtune-style `KEY=VALUE` overrides (`lr=2e-3 dropout=0.05 max_steps=null`): values read as YAML, keys are
    Recipe fields (`-` may stand for `_`); the Recipe model validates the values."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OfframpError(f"override {pair!r}: expected KEY=VALUE, e.g. lr=2e-3 (keys: {', '.join(OVERRIDABLE)})")
        if key not in OVERRIDABLE:
            raise OfframpError(f"override {pair!r}: no hyper-parameter {key!r}; known: {', '.join(OVERRIDABLE)}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key] = value
    return out


def load_recipe(
    ref: str, accelerator: str, overrides: dict[str, Any], settings: dict[str, Any] | None = None
) -> Recipe:
    """The recipe `ref`, with its section for this accelerator, then the non-None `overrides` (flags), then
    `settings` (`KEY=VALUE` overrides, where null means null) applied."""
    import yaml

    path = recipe_path(ref)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise OfframpError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise OfframpError(f"{path}: a recipe is a mapping of hyper-parameters")
    raw.setdefault("name", ref if ref in BUILTIN else path.stem)
    try:
        base = Recipe.model_validate(raw)
        merged = {**raw, **base.per_hardware.get(accelerator, {})}
        given = {k: v for k, v in overrides.items() if v is not None} | (settings or {})
        merged.update(given)
        if "max_steps" not in given and given.get("epochs") is not None:
            merged["max_steps"] = None  # epochs on the command line beats the recipe's max_steps
        return Recipe.model_validate(merged)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OfframpError(f"recipe {path.name}: {where}: {first['msg']}") from None
