"""The pipeline's config: one YAML file, validated with pydantic so an error names the key and the reason."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from offramp.artifacts import QuantizeMethod
from offramp.errors import OfframpError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    # built-in name, a .csv / chat .jsonl path, or captured traffic: traffic:STORE?tag=T&model=M&since=ISO&until=ISO
    # (`offramp data from-traffic`: the API's answers are the labels, the latest calls the test split)
    source: str = "banking77"
    text_column: str = "text"  # a CSV's columns holding the query and its label
    label_column: str = "label"
    system: str | None = None  # system prompt for every record; None: a JSONL's / the traffic's own, else neutral
    test_fraction: float = Field(0.2, gt=0, lt=1)  # held out when the source has no test split (traffic: the latest)
    train_per_label: int | None = Field(20, ge=1)
    test_per_label: int | None = Field(3, ge=1)
    prompt_style: Literal["short", "labels"] = "short"
    seed: int = 0


class FinetuneConfig(_Strict):
    enabled: bool = True
    recipe: str = "default"  # default | full | path to a recipe YAML
    args: list[str] = []  # extra `offramp finetune` flags, e.g. ["--rank", "32"]


class ClassifierConfig(_Strict):
    # On a classification task (the data has labels.json), one more candidate: a label head on the same model
    # (`offramp finetune --head classify`), served by vLLM's pooling runner behind offramp's chat face, evaluated,
    # benchmarked and priced beside the LM head; the verdict takes the best candidate that passes the gate.
    enabled: bool = True
    recipe: str = "classify"  # offramp/configs/finetune-classify.yaml, or a recipe YAML
    args: list[str] = []  # extra `offramp finetune` flags, e.g. ["--max-steps", "64"]


class QuantizeConfig(_Strict):
    # quantizes the tuned model (merged) or, without finetune, the base model; each checkpoint vLLM can serve on
    # this host is evaluated as one more candidate
    methods: list[QuantizeMethod] = []
    n_heldout: int = Field(32, ge=1)  # held-out conversations scored for the perplexity change
    args: list[str] = []  # extra `offramp quantize` flags, e.g. ["--n-calib", "64"]


class EvalConfig(_Strict):
    concurrency: int = Field(16, ge=1)  # requests in flight per endpoint system
    # The base model's free answers were 100 % invalid on Banking77 (it chats); `both` measures them again.
    base_answers: Literal["both", "constrained"] = "constrained"


class BaselineConfig(_Strict):
    name: str
    spec: str  # openai:MODEL, http://host:port/v1, or cited:TASK/NAME
    fallback: str | None = None  # used when spec needs a key that is not set (e.g. a cited score)


class ServeConfig(_Strict):
    enabled: bool = True
    concurrency: list[int] = [1, 4]
    num_prompts: int = Field(32, ge=1)
    slo_p99_ttft_s: float = Field(2.0, gt=0)
    slo_p99_tpot_ms: float = Field(200.0, gt=0)
    structured_choice: bool = True
    args: list[str] = []  # extra `offramp serve` flags


class CostConfig(_Strict):
    api_model: str = "gpt-4o-mini"
    host: str | None = "aws-c7i-xlarge"
    host_price_per_hour: float | None = Field(None, ge=0)
    requests_per_month: int = Field(1_000_000, ge=0)
    peak_to_average: float = Field(3.0, ge=1)
    args: list[str] = []  # extra `offramp breakeven` flags


class CascadeConfig(_Strict):
    enabled: bool = True
    target: str | None = None  # e.g. "accuracy>=baseline-1"; else the escalation budget below
    max_escalation: float = Field(0.3, ge=0, le=1)

    @field_validator("target")
    @classmethod
    def _target_parses(cls, v: str | None) -> str | None:
        if v is not None:
            from offramp.expressions import parse_target

            try:
                parse_target(v, None)
            except OfframpError as e:
                raise ValueError(str(e)) from None
        return v


class PipelineConfig(_Strict):
    name: str = "default"
    model: str = "smollm2-135m-instruct"
    task: TaskConfig = TaskConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    baselines: list[BaselineConfig] = [
        BaselineConfig(name="gpt-4o-mini", spec="openai:gpt-4o-mini", fallback="cited:banking77/gpt-4-1shot")
    ]
    gate: str = "accuracy>=baseline-5"
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    cost: CostConfig = CostConfig()
    cascade: CascadeConfig = CascadeConfig()

    @field_validator("name")
    @classmethod
    def _name_is_one_path_component(cls, v: str) -> str:
        # the run's directory is runs_dir/<name>: "../../x" would write outside it
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"must be one path component of letters, digits, '.', '_' or '-' (got {v!r})")
        return v

    @field_validator("gate")
    @classmethod
    def _gate_parses(cls, v: str) -> str:
        # checked at load, not when the eval stage starts after minutes of fine-tuning
        from offramp.expressions import parse_gate

        try:
            parse_gate(v)
        except OfframpError as e:
            raise ValueError(str(e)) from None
        return v


def default_config_path() -> Path:
    return Path(str(resources.files("offramp") / "configs" / "pipeline-cpu.yaml"))


def load_config(path: Path | None) -> PipelineConfig:
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise OfframpError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise OfframpError(f"{path}: not valid YAML ({e.__class__.__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise OfframpError(f"{path}: expected a mapping of keys at the top level")
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise OfframpError(f"{path}: {key}: {err['msg']}") from None
    check_names(cfg, path)
    return cfg


def _flag_values(args: list[str], flag: str) -> list[str]:
    """The values of `flag` in a stage's extra args, as `--flag V` or `--flag=V`."""
    pairs = zip(args, args[1:], strict=False)
    return [v for a, v in pairs if a == flag] + [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]


def check_names(cfg: PipelineConfig, path: Path) -> None:
    """Every name a stage will look up, checked before the first stage runs, not after minutes of fine-tuning:
    the API and the host in the price catalogue (with the user's --prices files), and each baseline's spec."""
    from offramp.cost.prices import load_catalogue
    from offramp.systems import parse_system

    def check(key: str, lookup) -> None:
        try:
            lookup()
        except OfframpError as e:
            raise OfframpError(f"{path}: {key}: {e}") from None

    if cfg.task.source.startswith("traffic:"):
        from offramp.traffic.dataset import parse_source

        check("task.source", lambda: parse_source(cfg.task.source))
    c = cfg.cost
    catalogue = load_catalogue([Path(p) for p in _flag_values(c.args, "--prices")])
    check("cost.api_model", lambda: catalogue.api_price(c.api_model, allow_retired="--allow-retired" in c.args))
    if c.host and c.host_price_per_hour is None:
        check("cost.host", lambda: catalogue.host_price(c.host))
    names = [b.name for b in cfg.baselines]
    for i, b in enumerate(cfg.baselines):
        for field, spec in (("spec", b.spec), ("fallback", b.fallback)):
            if spec is not None:
                check(f"baselines.{i}.{field}", lambda spec=spec, b=b: parse_system(f"{b.name}={spec}"))
        if b.name in ("base", "tuned", "classifier") or names.count(b.name) > 1:
            raise OfframpError(f"{path}: baselines.{i}.name: {b.name!r} is taken; give each baseline its own name")
