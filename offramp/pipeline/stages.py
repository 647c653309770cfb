"""The default pipeline's stages, each a thin wrapper over one `offramp <stage>` command.

Each stage is a function `(inputs, work dir, upstream work dirs)`; `build_stages` declares what each one reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from offramp.artifacts import load_report
from offramp.cost.prices import Catalogue, load_catalogue
from offramp.data import BUILTIN, task_name
from offramp.errors import OfframpError
from offramp.expressions import parse_gate
from offramp.hardware import accelerator
from offramp.paths import read_json, write_json
from offramp.pipeline.config import PipelineConfig
from offramp.pipeline.inputs import ConfigView, Inputs
from offramp.pipeline.runner import Stage, StageFailed, console, offramp_cmd
from offramp.providers import KEY_ENV  # a missing key switches a baseline to its fallback
from offramp.serve.server import free_port, log_tail, spawn_group, stop_group, wait_until_healthy
from offramp.store import KNOWN, resolve_model
from offramp.traffic.dataset import is_traffic, parse_source


def baseline_spec(name: str, spec: str, fallback: str | None) -> tuple[str, str]:
    """(name, spec) of a baseline as it will be evaluated. Without the API's key its fallback stands in, under a
    name of its own (`gpt-4-1shot-cited`): a cited GPT-4 score must never be shown as the configured API's."""
    provider = spec.split(":", 1)[0]
    if provider in KEY_ENV and not os.environ.get(KEY_ENV[provider]) and fallback:
        if fallback.startswith("cited:"):
            return f"{fallback.rsplit('/', 1)[-1]}-cited", fallback
        return name, fallback
    return name, spec


@dataclass(frozen=True)
class Baselines:
    usable: list[tuple[str, str]]  # (name, spec) of each baseline the eval can measure or cite for this task
    missing: list[str]  # why each other configured baseline cannot stand in


def resolve_baselines(cfg: PipelineConfig) -> Baselines:
    """The configured baselines this run can use: an API whose key is set (else its fallback), an endpoint, or a
    cited score of this very task. The others are named with the reason, so the verdict can say what to add."""
    from offramp.cited import lookup

    usable, missing = [], []
    if is_traffic(cfg.task.source):
        return Baselines([], [])  # the API that answered is the baseline: its answers are the labels (TEACHER_GATE)
    task = task_name(cfg.task.source)
    for b in cfg.baselines:
        name, spec = baseline_spec(b.name, b.spec, b.fallback)
        provider = spec.split(":", 1)[0]
        why = None
        if provider in KEY_ENV and not os.environ.get(KEY_ENV[provider]):
            why = f"{KEY_ENV[provider]} is not set and it has no fallback"
        elif spec.startswith("cited:") and (cited := lookup(spec.removeprefix("cited:"))).task != task:
            configured = b.spec.split(":", 1)[0]
            unkeyed = f"{KEY_ENV[configured]} is not set, and its fallback " if spec != b.spec else ""
            why = f"{unkeyed}{spec} is a {cited.task} score, but the task is {task!r}"
        if why:
            missing.append(f"{b.name} ({b.spec}): {why}")
        else:
            usable.append((name, spec))
    return Baselines(usable, missing)


def baseline_gap(cfg: PipelineConfig) -> str | None:
    """Why quality cannot be judged on this config (its gate compares with a baseline, and none is usable), with
    what to add; None when it can."""
    resolved = resolve_baselines(cfg)
    if resolved.usable or not parse_gate(cfg.gate).relative or is_traffic(cfg.task.source):
        return None
    why = "; ".join(resolved.missing) or "the config lists none"
    return f"the gate {cfg.gate!r} compares with a baseline, and there is none ({why}); {NO_BASELINE_HINT}"


NO_BASELINE_HINT = (
    "add a baseline: set the API's key (e.g. OPENAI_API_KEY), or give `baselines:` an http://host:port/v1 endpoint "
    "that answers like the API, or a cited:TASK/NAME score of this task; or make the gate absolute (e.g. "
    "accuracy>=80)"
)


Up = dict[str, Path]  # upstream stages' work dirs by name


def _log(w: Path) -> Path:
    return w / "stage.log"


def _candidate(up: Up) -> str:
    return "tuned" if "finetune" in up else "base"


def pull(i: Inputs, w: Path, up: Up) -> None:
    """A store name is pulled; anything else must already resolve (a checkpoint dir, or a hub id this host can
    fetch), or the run stops here rather than after the data stage."""
    if i.config.model in KNOWN:
        offramp_cmd("models", "pull", i.config.model, log=_log(w))
    else:
        resolve_model(i.config.model)


TEACHER_GATE = (
    "on captured traffic the baseline is the API that answered: its answers are the labels, so its agreement is "
    "100 % by definition and a gate relative to it (accuracy>=baseline-5) is judged as the absolute agreement it "
    "implies (accuracy>=95): how often the small model agrees with the API"
)


def data(i: Inputs, w: Path, up: Up) -> None:
    t = i.config.task
    system = ["--system", t.system] if t.system is not None else []
    if is_traffic(t.source):
        sel = parse_source(t.source)
        args = ["data", "from-traffic", "--store", sel.store, "--out", str(w / "data")]
        for flag, value in sel.filters().items():
            if value is not None:
                args += [f"--{flag}", value.isoformat() if hasattr(value, "isoformat") else str(value)]
        offramp_cmd(*args, "--test-fraction", str(t.test_fraction), *system, log=_log(w))
        return
    args = ["data", "prepare", t.source, "--out", str(w / "data"), "--seed", str(t.seed), *system]
    args += ["--test-fraction", str(t.test_fraction)]
    args += ["--prompt-style", t.prompt_style, "--text-column", t.text_column, "--label-column", t.label_column]
    if t.train_per_label:
        args += ["--per-label", str(t.train_per_label)]
    if t.test_per_label:
        args += ["--test-per-label", str(t.test_per_label)]
    offramp_cmd(*args, log=_log(w))


def finetune(i: Inputs, w: Path, up: Up) -> None:
    f = i.config.finetune
    offramp_cmd(
        "finetune", i.config.model, "--data", str(up["data"] / "data/train.jsonl"), "--recipe", f.recipe,
        "--out", str(w / "ft"),
        *(["--merge"] if i.derived.get("merge") else []),  # the merged checkpoint is what gets quantized and served
        *i.derived["host_price_args"], *f.args, log=_log(w),
    )  # fmt: skip


CLASSIFIER = "classifier"  # the classifier candidate: its served name, eval system and report dirs
CLASSIFIER_OUTCOME = "classifier.json"


def classifier(i: Inputs, w: Path, up: Up) -> None:
    """On a classification task, the label head (`finetune --head classify`) as one more candidate. A task without
    a label set, or a failed run, is an outcome noted in classifier.json, not a failed pipeline."""
    if not (up["data"] / "data/labels.json").is_file():
        outcome = {"status": "not-classification", "note": "the task's answers are free text (no labels.json)"}
    else:
        c = i.config.classifier
        try:
            offramp_cmd(
                "finetune", i.config.model, "--data", str(up["data"] / "data/train.jsonl"), "--head", "classify",
                "--recipe", c.recipe, "--out", str(w / "ft"), *i.derived["host_price_args"], *c.args, log=_log(w),
            )  # fmt: skip
            outcome = {"status": "done", "checkpoint": str(w / "ft" / "merged")}
        except StageFailed as e:
            outcome = {"status": "failed", "note": str(e)}
    if outcome.get("note"):
        _note(_log(w), f"classifier: {outcome['status']}: {outcome['note']}")
    write_json(w / CLASSIFIER_OUTCOME, outcome)


def classifier_checkpoint(up: Up) -> Path | None:
    """The classifier candidate's merged checkpoint, where the classifier stage trained one."""
    outcome = up["classifier"] / CLASSIFIER_OUTCOME if "classifier" in up else None
    if outcome is None or not outcome.is_file() or read_json(outcome).get("status") != "done":
        return None
    return Path(read_json(outcome)["checkpoint"])


def quantize(i: Inputs, w: Path, up: Up) -> None:
    """Each method into w/<method>/; a method this host cannot run is noted, not fatal to the pipeline."""
    src = str(up["finetune"] / "ft" / "merged") if "finetune" in up else i.config.model
    q = i.config.quantize
    outcomes = []
    for method in q.methods:
        out = w / method
        try:
            offramp_cmd(
                "quantize", src, "--method", method, "--calib", str(up["data"] / "data/train.jsonl"),
                "--n-heldout", str(q.n_heldout), "--out", str(out), *q.args, log=_log(w),
            )  # fmt: skip
        except StageFailed as e:
            status = "not-supported" if e.returncode == 2 else "failed"
            outcomes.append({"method": method, "status": status, "note": str(e)})
            _note(_log(w), f"quantize {method}: {status}: {e}")
            continue
        outcomes.append({"method": method, "status": "done", "checkpoint": str(out)})
    write_json(w / QUANTIZED, {"source": src, "methods": outcomes})


@dataclass
class Served:
    urls: dict[str, str]  # served name -> base URL
    procs: dict[str, subprocess.Popen]

    def keep_only(self, name: str) -> None:
        """Stop every server but `name`'s: a bench measures one server, not it and its idle neighbours on the same
        cores (with three up, the LM head's p99 TPOT missed the SLO it met alone)."""
        for other, proc in self.procs.items():
            if other != name:
                stop_group(proc)


@contextmanager
def served_all(i: Inputs, w: Path, up: Up, checkpoints: dict[str, str], *, base: bool = True) -> Iterator[Served]:
    """The base model (+ the tuned adapter) as `base` (unless base=False), and each checkpoint under its served
    name, each on its own free loopback port; all start together (their start-ups overlap)."""
    adapter = ["--adapter", f"tuned={up['finetune'] / 'ft' / 'adapter'}"] if "finetune" in up else []
    launches = {"base": [i.config.model, *adapter]} if base else {}
    launches |= {name: [path] for name, path in checkpoints.items()}
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for name, target in launches.items():
            port = free_port()
            args = [target[0], "--name", name, "--port", str(port), *target[1:], *i.config.serve.args]
            console.print(f"  [dim]$ offramp serve {' '.join(args)}[/]")
            with open(_log(w), "a") as server_log:
                proc = spawn_group([sys.executable, "-m", "offramp", "serve", *args], stdout=server_log)
            procs[name] = (proc, port)
        for name, (proc, port) in procs.items():
            wait_until_healthy(proc, f"http://127.0.0.1:{port}", 600, f"offramp serve {name}", partial(_tail, _log(w)))
        yield Served({name: f"http://127.0.0.1:{port}" for name, (_, port) in procs.items()},
                     {name: proc for name, (proc, _) in procs.items()})  # fmt: skip
    finally:
        for proc, _ in procs.values():
            stop_group(proc)


def _tail(log: Path) -> str:
    return "last lines of its log: " + " | ".join(log_tail(log, 3))


def _task_args(i: Inputs, up: Up) -> list[str]:
    # A built-in task is named as such (cited scores are tied to it); eval draws the same test subset and
    # prompt as `data prepare` did (same per-label selection, seed and short system prompt).
    t = i.config.task
    if t.source in BUILTIN and t.prompt_style == "short" and t.system is None:
        limit = ["--limit-per-label", str(t.test_per_label)] if t.test_per_label else []
        return ["--task", t.source, *limit, "--seed", str(t.seed)]
    kind = load_report(up["data"] / "data/data_report.json", "data").kind
    return ["--task", str(up["data"] / "data/test.jsonl"), *(["--task-type", kind] if kind == "generation" else [])]


def evaluate(i: Inputs, w: Path, up: Up) -> None:
    # Scored as served: through vLLM, answers constrained to the label set (and free, for comparison).
    # Each quantized checkpoint this host's vLLM serves gets its own server, up at the same time.
    c = i.config
    quantized = quantized_systems(up.get("quantize"), _candidate(up))
    write_json(w / QUANTIZED, quantized)
    for q in quantized:
        if q.get("note"):
            _note(_log(w), f"eval: {q['system']} not evaluated: {q['note']}")
    cls = classifier_checkpoint(up)
    checkpoints = {q["system"]: q["checkpoint"] for q in quantized if q["evaluated"]}
    with served_all(i, w, up, checkpoints) as served:
        urls = served.urls
        url = urls["base"]
        base_answers = "" if c.eval.base_answers == "both" else f"+answers={c.eval.base_answers}"
        systems = ["--system", f"base={url}/v1+model=base{base_answers}"]
        if "finetune" in up:
            systems += ["--system", f"tuned={url}/v1+model=tuned"]
        for q in quantized:
            if q["evaluated"]:
                systems += ["--system", f"{q['system']}={urls[q['system']]}/v1+model={q['system']}"]
        for name, spec in i.derived["baselines"]:
            systems += ["--system", f"{name}={spec}"]
        offramp_cmd(
            "eval", *_task_args(i, up), *systems, *_gate_args(i), "--concurrency", str(c.eval.concurrency),
            "--candidate", _candidate(up), "--out", str(w), log=_log(w),
        )  # fmt: skip
        if c.serve.enabled:  # benchmark the LM candidate's server now, alone: one vLLM start-up (~60 s) less
            served.keep_only("base")
            _bench_here(i, urls["base"], w, w / "bench", up, _candidate(up))
    if cls:  # after the LM candidate's servers, not beside them: idle vLLM servers still take CPU from the busy one
        with served_all(i, w, up, {CLASSIFIER: str(cls)}, base=False) as served:
            try:
                evaluate_classifier(i, w / CLASSIFIER, up, served.urls[CLASSIFIER])
            except StageFailed as e:  # the LM candidate's report stands; the classifier is then not judged
                _note(_log(w), f"eval: the classifier candidate's eval failed: {e}")
                return
            if c.serve.enabled:
                _bench_here(i, served.urls[CLASSIFIER], w, w / CLASSIFIER / "bench", up, CLASSIFIER)


def _bench_here(i: Inputs, url: str, w: Path, out: Path, up: Up, model: str) -> None:
    """The eval stage's bench of a server it has up; a failure is left for the bench stage to retry."""
    try:
        run_bench(i, url, out, up, _log(w), model)
    except StageFailed as e:
        _note(_log(w), f"eval: benchmarking {model} failed, the bench stage will retry: {e}")


def evaluate_classifier(i: Inputs, out: Path, up: Up, url: str) -> None:
    """The classifier candidate through its chat face (the label as the answer), on the same queries, against the
    same baselines and gate, in its own eval report (a cached API answer is not asked again)."""
    systems = ["--system", f"{CLASSIFIER}={url}/v1+model={CLASSIFIER}+answers=free"]
    for name, spec in i.derived["baselines"]:
        systems += ["--system", f"{name}={spec}"]
    offramp_cmd(
        "eval", *_task_args(i, up), *systems, *_gate_args(i), "--concurrency", str(i.config.eval.concurrency),
        "--candidate", CLASSIFIER, "--out", str(out), log=_log(out.parent),
    )  # fmt: skip


def _gate_args(i: Inputs) -> list[str]:
    """The gate and the baseline it compares with. Without a baseline every candidate is still measured, and a
    gate relative to the baseline is left for the verdict to report as NEEDS-BASELINE."""
    if baselines := i.derived["baselines"]:
        return ["--gate", i.config.gate, "--baseline", baselines[0][0]]
    gate = parse_gate(i.config.gate)
    if i.derived.get("teacher") and gate.relative:  # TEACHER_GATE: the teacher scores 100 on its own answers
        return ["--gate", f"{gate.metric}{gate.op}{min(100.0, 100.0 + gate.offset):g}", "--no-baseline"]
    if parse_gate(i.config.gate).relative:
        return ["--no-baseline"]
    return ["--gate", i.config.gate, "--no-baseline"]


def bench(i: Inputs, w: Path, up: Up) -> None:
    """The LM candidate's bench into w, the classifier's into w/classifier: measured on the eval stage's servers
    (each alone) where that worked, else on a server of its own, one at a time."""
    cls = classifier_checkpoint(up)
    wanted = {"base": (Path(), _candidate(up))} | ({CLASSIFIER: (Path(CLASSIFIER), CLASSIFIER)} if cls else {})
    missing = {}
    for name, (sub, model) in wanted.items():
        measured = up["eval"] / sub / "bench" if "eval" in up else None
        if measured is not None and (measured / "bench_report.json").is_file():
            shutil.copytree(measured, w / sub, dirs_exist_ok=True)
            _note(_log(w), f"bench: {name} measured on the eval stage's server ({measured})")
        else:
            missing[name] = (sub, model)
    for name, (sub, model) in missing.items():  # one server at a time: each measured alone on the host
        checkpoints = {CLASSIFIER: str(cls)} if name == CLASSIFIER else {}
        with served_all(i, w, up, checkpoints, base=name == "base") as served:
            run_bench(i, served.urls[name], w / sub, up, _log(w), model)


def run_bench(i: Inputs, url: str, out: Path, up: Up, log_path: Path, model: str) -> None:
    s = i.config.serve
    traffic = i.derived.get("traffic_source")  # replay the captured requests as the load
    load = ["--traffic", traffic] if traffic else ["--workload", str(up["data"] / "data/test.jsonl")]
    args = [
        "bench", url, *load, "--model", model,
        "--concurrency", ",".join(map(str, s.concurrency)), "--num-prompts", str(s.num_prompts),
        "--slo-p99-ttft-s", str(s.slo_p99_ttft_s), "--slo-p99-tpot-ms", str(s.slo_p99_tpot_ms),
        "--out", str(out), *_host_args(i),
    ]  # fmt: skip
    labelled = (up["data"] / "data/labels.json").is_file()  # free-text traffic has no label set
    if s.structured_choice and labelled and model != CLASSIFIER:  # a classifier answers with a label anyway
        args += ["--structured-choice", str(up["data"] / "data/labels.json")]
    offramp_cmd(*args, log=log_path)


def breakeven(i: Inputs, w: Path, up: Up) -> None:
    offramp_cmd(*_breakeven_args(i, up), "--out", str(w), log=_log(w))
    if (up["bench"] / CLASSIFIER / "bench_report.json").is_file():  # the classifier candidate, priced the same way
        offramp_cmd(*_breakeven_args(i, up, CLASSIFIER), "--out", str(w / CLASSIFIER), log=_log(w))


def _breakeven_args(i: Inputs, up: Up, candidate: str | None = None) -> list[str]:
    """`offramp breakeven` of the LM candidate, or of the classifier (its bench, eval gate and training run)."""
    c = i.config.cost
    sub = Path(candidate or "")
    bench_report = str(up["bench"] / sub / "bench_report.json")
    if traffic := i.derived.get("traffic_source"):  # volume, token mix, peaks and the API's model: measured there
        args = ["breakeven", "--traffic", traffic, "--bench", bench_report]
        args += [*_host_args(i), *c.args]
    else:
        args = [
            "breakeven", "--api", c.api_model, "--bench", bench_report,
            "--requests-per-month", str(c.requests_per_month), "--peak-to-average", str(c.peak_to_average),
            *_host_args(i), *c.args,
        ]  # fmt: skip
    api_prompts = up["data"] / "data" / "api_prompts.jsonl"
    if api_prompts.is_file() and not traffic:  # the API priced on the prompt it is sent, not the small model's
        args += ["--api-prompts", str(api_prompts)]
    if "eval" in up and (up["eval"] / sub / "eval_report.json").is_file():
        args += ["--eval", str(up["eval"] / sub / "eval_report.json")]
    trained = up.get("classifier" if candidate else "finetune")
    if trained is not None and (trained / "ft" / "finetune_report.json").is_file():
        args += ["--finetune", str(trained / "ft" / "finetune_report.json")]
    return args


def cascade(i: Inputs, w: Path, up: Up) -> None:
    """The cascade as one more candidate: its curve and threshold, then its cost at the escalation it needs."""
    hosted = load_report(up["breakeven"] / "breakeven_report.json", "breakeven").self_hosted
    if hosted is None or hosted.cost.per_request_usd.value is None:  # no load level met the SLO: nothing to price
        _note(_log(w), "cascade: not priced: no load level of the candidate's bench met the latency SLO")
        return
    c = i.config.cascade
    target = ["--target", c.target] if c.target else ["--max-escalation", str(c.max_escalation)]
    offramp_cmd(
        "cascade", "--eval", str(up["eval"] / "eval_report.json"),
        "--breakeven", str(up["breakeven"] / "breakeven_report.json"), "--candidate", _candidate(up),
        "--baseline", i.derived["baselines"][0][0], *target, "--out", str(w / "cascade"), log=_log(w),
    )  # fmt: skip
    share = load_report(w / "cascade" / "cascade_report.json", "cascade").escalation_share
    offramp_cmd(*_breakeven_args(i, up), "--escalation-share", str(share), "--out", str(w / "breakeven"), log=_log(w))


HOST = ("cost.host", "cost.host_price_per_hour")  # the host's price: bench turns throughput into $ with it


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages `cfg` asks for, in order. Each declares the config fields it reads (and only those resolve for
    it) and what it takes from outside the config; its cache key is exactly those (offramp/pipeline/inputs.py)."""

    def stage(name, reads, run, needs=(), *, derived=None, optional=False, skip=None) -> Stage:
        inputs = Inputs(ConfigView(cfg, reads), derived or {})
        return Stage(name, inputs.key_material(), partial(run, inputs), list(needs), optional=optional, skip=skip)

    catalogue = load_catalogue()  # the prices the stages will read, resolved once into their keys
    tuned, quantized = cfg.finetune.enabled, bool(cfg.quantize.methods)
    ft, qs = (["finetune"] if tuned else []), (["quantize"] if quantized else [])
    host = _host_price_entry(cfg, catalogue)
    traffic = _traffic_inputs(cfg)
    stages = [stage("pull", ["model"], pull), stage("data", ["task"], data, derived=traffic)]
    price_args = {"host_price_args": _host_price_args(cfg, host)}
    if tuned:
        derived = {**price_args, **_recipe_file(cfg.finetune.recipe), **({"merge": True} if quantized else {})}
        stages.append(stage("finetune", ["model", "finetune"], finetune, ["pull", "data"], derived=derived))
    cls = ["classifier"] if cfg.classifier.enabled else []
    if cls:
        derived = {**price_args, **_recipe_file(cfg.classifier.recipe)}
        stages.append(stage("classifier", ["model", "classifier"], classifier, ["pull", "data"], derived=derived))
    if quantized:
        stages.append(stage("quantize", ["model", "quantize"], quantize, ["pull", "data", *ft], optional=True))
    baselines = resolve_baselines(cfg).usable
    eval_reads = ["model", "task", "gate", "eval", "serve", *HOST]
    api_prices = _api_price_entries(catalogue, (spec for _, spec in baselines))
    derived = {"baselines": baselines, "api_prices": api_prices, "host_price": host, **traffic}
    eval_needs = ["pull", "data", *ft, *cls, *qs]
    stages.append(stage("eval", eval_reads, evaluate, eval_needs, derived=derived, optional=True))
    if cfg.serve.enabled:
        prices = {"catalogue_sha256": _catalogue_sha256()}
        bench_needs = ["pull", "data", *ft, *cls, "eval"]
        bench_derived = {"host_price": host, **traffic}
        stages.append(stage("bench", ["model", "serve", *HOST], bench, bench_needs, derived=bench_derived))
        be_derived = {**prices, **traffic}
        be_needs = ["data", "bench", "eval", *ft, *cls]
        stages.append(stage("breakeven", ["cost"], breakeven, be_needs, derived=be_derived))
        if cfg.cascade.enabled:
            needs = ["data", "eval", "bench", "breakeven", *ft]
            derived = {**prices, "baselines": baselines}
            skip = None if baselines else "no baseline to escalate to (the cascade answers unsure queries with it)"
            if traffic:
                skip = "on captured traffic the baseline is the recorded answers, which cannot answer a new query"
            stages.append(
                stage("cascade", ["cascade", "cost"], cascade, needs, derived=derived, optional=True, skip=skip)
            )
    return stages


def _traffic_inputs(cfg: PipelineConfig) -> dict:
    """For `task.source: traffic:…`: what the stages read from the store (its selection's size and newest call, so
    new traffic re-runs them), the store spec breakeven and bench measure, and the teacher flag for the gate."""
    if not is_traffic(cfg.task.source):
        return {}
    from offramp.traffic.store import open_store

    sel = parse_source(cfg.task.source)
    with open_store(sel.store, create=False) as store:
        calls = store.query(**sel.filters())
    newest = max((c.recorded_at for c in calls if c.recorded_at), default=None)
    return {
        "traffic_source": cfg.task.source.removeprefix("traffic:"),
        "traffic_selection": {"calls": len(calls), "newest": newest.isoformat() if newest else None},
        "teacher": True,
    }


def _recipe_file(ref: str) -> dict:
    """A built-in recipe by its file, so editing offramp/configs/finetune-*.yaml re-runs what trains with it (a
    recipe given as a path is in the key by its content already)."""
    from offramp.finetune.recipe import recipe_path

    return {"recipe_file": str(recipe_path(ref))}


def _catalogue_sha256() -> str:
    from offramp.cost.prices import builtin_path

    return hashlib.sha256(builtin_path().read_bytes()).hexdigest()


def _host_price_entry(cfg: PipelineConfig, catalogue: Catalogue) -> dict | None:
    """The catalogue entry of the configured host, as the stages that price it will read it."""
    if cfg.cost.host_price_per_hour is not None or not cfg.cost.host:
        return None
    return catalogue.host_price(cfg.cost.host).model_dump()


def _api_price_entries(catalogue: Catalogue, specs: Iterable[str]) -> dict[str, dict]:
    """The catalogue entries of the paid APIs an eval calls: it prices their answers."""
    out = {}
    for spec in specs:
        provider, _, model = spec.partition(":")
        if provider in KEY_ENV:
            with contextlib.suppress(OfframpError):  # a model the catalogue lacks is priced by nobody
                out[model] = catalogue.api_price(model).model_dump()
    return out


QUANTIZED = "quantized.json"  # the quantize stage's outcome per method; the eval stage's quantized systems


def quantized_systems(quantize_dir: Path | None, candidate: str) -> list[dict]:
    """The quantize stage's checkpoints as eval systems (e.g. `tuned-w8a8-int8-rtn`): evaluated where this host's
    vLLM serves the format, else skipped with the reason."""
    if quantize_dir is None or not (quantize_dir / QUANTIZED).is_file():
        return []
    systems = []
    for m in read_json(quantize_dir / QUANTIZED)["methods"]:
        entry = {"method": m["method"], "system": f"{candidate}-{m['method']}", "evaluated": False, **m}
        if m["status"] == "done":
            report = load_report(Path(m["checkpoint"]) / "quantize_report.json", "quantize")
            if report.servable_by_vllm_cpu_here or accelerator() == "cuda":
                entry["evaluated"] = True
            else:
                entry["note"] = f"vLLM cannot serve {m['method']} on this host ({report.vllm_cpu_note})"
        systems.append(entry)
    return systems


def _note(log: Path, line: str) -> None:
    console.print(f"  [yellow]note[/]: {line}")
    with open(log, "a") as f:
        f.write(f"offramp run: note: {line}\n")


def _host_args(i: Inputs) -> list[str]:
    c = i.config.cost
    if c.host_price_per_hour is not None:
        return ["--host-price-per-hour", str(c.host_price_per_hour)]
    return ["--host", c.host] if c.host else []


def _host_price_args(cfg: PipelineConfig, host: dict | None) -> list[str]:
    """For commands that take only an hourly price: a named host's on-demand price from its catalogue entry."""
    c = cfg.cost
    if c.host_price_per_hour is not None:
        return ["--host-price-per-hour", str(c.host_price_per_hour)]
    return ["--host-price-per-hour", str(host["on_demand_per_hour"])] if host else []
