"""Fine-tuning recipes: a YAML file of hyper-parameters, per-hardware overrides, then the command-line flags."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from offramp.errors import OfframpError

BUILTIN = ("default", "full")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    method: Literal["lora", "qlora"] = "lora"
    rank: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" (peft's shortcut: every linear layer but the output head) or module names.
    target_modules: str | list[str] = "all-linear"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_len: int = Field(128, ge=8)
    warmup: float = Field(0.05, ge=0)  # fraction of the steps when < 1, else a step count
    scheduler: str = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    save_steps: int | None = Field(None, ge=1)  # checkpoint interval; default about 10 per run
    logging_steps: int | None = Field(None, ge=1)
    # Overrides by accelerator ("cpu" / "cuda"), applied before the command-line flags.
    per_hardware: dict[Literal["cpu", "cuda"], dict[str, Any]] = {}

    def hyperparameters(self) -> dict[str, Any]:
        return self.model_dump(exclude={"per_hardware", "description"})


def recipe_path(ref: str) -> Path:
    if ref in BUILTIN:
        return Path(str(resources.files("offramp") / "configs" / f"finetune-{ref}.yaml"))
    path = Path(ref).expanduser()
    if not path.is_file():
        raise OfframpError(f"recipe {ref!r} is neither a built-in ({', '.join(BUILTIN)}) nor a YAML file")
    return path


def load_recipe(ref: str, accelerator: str, overrides: dict[str, Any]) -> Recipe:
    """The recipe `ref`, with its section for this accelerator and then the non-None `overrides` applied."""
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
        merged.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("max_steps") is None and overrides.get("epochs") is not None:
            merged["max_steps"] = None  # --epochs on the command line beats the recipe's max_steps
        return Recipe.model_validate(merged)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OfframpError(f"recipe {path.name}: {where}: {first['msg']}") from None
