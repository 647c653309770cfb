"""Run one system on the task through lm-eval and return its per-query answers in both scoring modes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from offramp.errors import OfframpError
from offramp.evals.api import ApiCache, Ledger, make_api_lm, probe
from offramp.evals.metrics import INVALID, label_index, parse_answer
from offramp.evals.scorers import FREE_GREEDY, LMEVAL_MULTIPLE_CHOICE, endpoint_scorer
from offramp.evals.tasks import STOP, EvalTask, build_lm_eval_tasks
from offramp.hardware import accelerator, model_dtype
from offramp.systems import EndpointSystem, LocalSystem


@dataclass
class Answers:
    """Per query (in task order): the free answer, and per mode the label index (INVALID when none).
    Generation tasks have no label indices (`preds` is empty): their answers are the free texts in `texts`."""

    system: str
    model: str
    preds: dict[str, list[int]]  # mode -> label index per query
    queries: list[dict]  # per-query record for the report (answers, confidences, usage)
    wall_s: float
    notes: list[str] = field(default_factory=list)
    usage: dict | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)  # mode -> raw answer per query
    scorers: dict[str, str] = field(default_factory=dict)  # mode -> the scorer that produced it (evals/scorers.py)


def _gen_kwargs(max_gen_toks: int, until: list[str], **extra: Any) -> dict:
    return {"until": until, "max_gen_toks": max_gen_toks, "do_sample": False, "temperature": 0.0, **extra}


def _max_gen_toks(task: EvalTask) -> int:
    return task.gen_toks()


GENERATION_NOTE = (
    "generation: free answers (lm-eval generate_until, greedy, up to {n} new tokens, stopped by the end-of-turn "
    "token) scored against each record's reference"
)


def _generation_answers(
    system: str, model: str, task: EvalTask, samples: dict, wall: float, notes: list[str], ledger: Ledger | None
) -> Answers:
    texts, queries = [], []
    for q, s in zip(task.queries, samples["free"], strict=True):
        raw = s["filtered_resps"][0]
        texts.append(raw)
        row: dict[str, Any] = {"answer": raw}
        if ledger is not None:
            usage = dict(ledger.lookup(q.messages, "free") or {})
            usage.pop("logprob", None)
            row["usage"] = usage or None
        queries.append({"id": q.id, "free": row})
    usage = None
    if ledger is not None:
        usage = _sum_usage(queries, {"free": None})
        usage.update(
            {"http_requests": ledger.http_requests, "retries": ledger.retries, "status_counts": ledger.status_counts}
        )
    return Answers(system, model, {}, queries, wall, notes, usage, texts={"free": texts})


def _evaluate(lm: Any, tasks: list) -> dict[str, list[dict]]:
    import logging

    from lm_eval.evaluator import evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would drown the report
    task_dict = {"tasks": {t.config.task: t for t in tasks}, "groups": {}}
    out = evaluate(lm, task_dict, apply_chat_template=True, log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    samples = out["samples"]
    return {name.removeprefix("offramp_"): sorted(samples[name], key=lambda s: s["doc"]["qid"]) for name in samples}


def _choice_confidence(lls: list[float]) -> dict:
    """Constrained answer from label log-likelihoods: the argmax; its log-prob and P(label | prompt) = exp(log-prob),
    the same confidence an endpoint's token logprobs give; its probability among the labels (softmax over the label
    set); and the margin in log-prob to the runner-up."""
    best = max(range(len(lls)), key=lls.__getitem__)
    top = max(lls)
    z = sum(math.exp(x - top) for x in lls)
    runner_up = max((x for i, x in enumerate(lls) if i != best), default=-math.inf)
    return {
        "pred": best,
        "logprob": round(lls[best], 6),
        "prob": math.exp(lls[best]),
        "prob_among_labels": round(1.0 / z, 6),
        "margin": round(lls[best] - runner_up, 6) if runner_up > -math.inf else None,
    }


def run_local(system: LocalSystem, task: EvalTask, *, batch_size: int = 8, device: str | None = None) -> Answers:
    from lm_eval.models.huggingface import HFLM

    from offramp.store import resolve_model

    path = resolve_model(system.model)
    device = device or accelerator()
    dtype = model_dtype("eval", "cuda" if device.startswith("cuda") else "cpu")
    try:
        lm = HFLM(pretrained=path, peft=system.adapter, dtype=dtype, device=device, batch_size=batch_size)
    except (OSError, ValueError) as e:
        raise OfframpError(
            f"system {system.name!r}: cannot load {path}{' + ' + system.adapter if system.adapter else ''}: {e}"
        ) from None
    eos = lm.tokenizer.eos_token or ""
    if task.kind == "generation":
        n_tok = _max_gen_toks(task)
        start = time.perf_counter()
        samples = _evaluate(lm, build_lm_eval_tasks(task, {"free": _gen_kwargs(n_tok, [])}))
        note = GENERATION_NOTE.format(n=n_tok) + f" ({eos!r})"
        return _generation_answers(system.name, path, task, samples, time.perf_counter() - start, [note], None)
    modes = {"free": _gen_kwargs(_max_gen_toks(task), STOP), "constrained": None}
    if system.answers != "both":
        modes = {system.answers: modes[system.answers]}
    start = time.perf_counter()
    samples = _evaluate(lm, build_lm_eval_tasks(task, modes, choice_suffix=eos))
    wall = time.perf_counter() - start
    index = label_index(task.labels)
    preds: dict[str, list[int]] = {m: [] for m in modes}
    queries = []
    for i, q in enumerate(task.queries):
        record: dict = {"id": q.id}
        if "free" in modes:
            raw = samples["free"][i]["filtered_resps"][0]  # generate_until: [text]
            preds["free"].append(parse_answer(raw, index))
            record["free"] = {"answer": raw, "label": _label(preds["free"][-1], task)}
        if "constrained" in modes:
            # multiple_choice: [(loglik, is_greedy)] per label
            conf = _choice_confidence([float(ll) for ll, _greedy in samples["constrained"][i]["filtered_resps"]])
            pred = conf.pop("pred")
            preds["constrained"].append(pred)
            record["constrained"] = {"label": task.labels[pred], **conf}
        queries.append(record)
    notes = []
    if "constrained" in modes:
        notes.append(
            "constrained = lm-eval multiple_choice: log-likelihood of each label (+ end-of-turn token "
            f"{eos!r}) after the chat-templated prompt; confidence prob = P(label | prompt) = exp(logprob), "
            "prob_among_labels = its softmax over the label set, margin = log-prob gap to the runner-up"
        )
    if system.answers != "both":
        notes.append(f"only {system.answers} answers were asked for (+answers={system.answers})")
    scorers = {"free": FREE_GREEDY, "constrained": LMEVAL_MULTIPLE_CHOICE}
    return Answers(system.name, path, preds, queries, wall, notes, scorers={m: scorers[m] for m in modes})


def _label(pred: int, task: EvalTask) -> str | None:
    return None if pred == INVALID else task.labels[pred]


def constrained_kwargs(system: EndpointSystem, labels: list[str]) -> dict | None:
    """How the endpoint is told to answer with a label only; None where the API has no such control."""
    if system.provider == "vllm":
        # vLLM >= 0.12 reads `structured_outputs`; the old `guided_choice` is silently ignored by vLLM 0.32
        return {"structured_outputs": {"choice": list(labels)}}
    if system.provider == "openai":
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(labels)}},
            "required": ["label"],
            "additionalProperties": False,
        }
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "label", "strict": True, "schema": schema},
            }
        }
    return None  # Anthropic's OpenAI-compatible API ignores response_format


def run_endpoint(
    system: EndpointSystem,
    task: EvalTask,
    *,
    cache: ApiCache | None,
    max_attempts: int = 6,
    backoff_s: float = 0.5,
    concurrency: int = 8,
) -> Answers:
    model = probe(system)
    ledger = Ledger()
    n_tok = _max_gen_toks(task)
    lm = make_api_lm(
        system,
        model,
        cache=cache,
        ledger=ledger,
        max_gen_toks=n_tok,
        max_attempts=max_attempts,
        backoff_s=backoff_s,
        concurrency=concurrency,
    )
    if task.kind == "generation":
        start = time.perf_counter()
        samples = _evaluate(lm, build_lm_eval_tasks(task, {"free": _gen_kwargs(n_tok, [])}))
        note = GENERATION_NOTE.format(n=n_tok)
        return _generation_answers(system.name, model, task, samples, time.perf_counter() - start, [note], ledger)
    # vLLM and OpenAI return the answer tokens' log-probabilities: a confidence per answer for the cascade
    asks = {"logprobs": True} if system.provider in ("vllm", "openai") else {}
    modes: dict[str, dict | None] = {"free": _gen_kwargs(n_tok, STOP, **asks)}
    extra = constrained_kwargs(system, task.labels)
    notes = []
    if extra is None:
        notes.append(f"{system.provider}: no constrained mode (its OpenAI-compatible API ignores response_format)")
    else:
        modes["constrained"] = _gen_kwargs(n_tok + 8, [], **extra, **asks)
        notes.append(f"constrained = request field {next(iter(extra))} restricting the answer to the label set")
    if system.answers != "both" and system.answers in modes:
        modes = {system.answers: modes[system.answers]}
        notes.append(f"only {system.answers} answers were asked for (+answers={system.answers})")
    start = time.perf_counter()
    samples = _evaluate(lm, build_lm_eval_tasks(task, modes))
    wall = time.perf_counter() - start
    index = label_index(task.labels)
    preds: dict[str, list[int]] = {m: [] for m in modes}
    queries = []
    for i, q in enumerate(task.queries):
        row: dict[str, Any] = {"id": q.id}
        for mode in modes:
            raw = samples[mode][i]["filtered_resps"][0]
            pred = parse_answer(raw, index)
            preds[mode].append(pred)
            usage = dict(ledger.lookup(q.messages, mode) or {})
            logprob = usage.pop("logprob", None)
            row[mode] = {"answer": raw, "label": _label(pred, task), "usage": usage or None}
            if logprob is not None:  # P(answer | prompt), the confidence the cascade thresholds
                row[mode].update(logprob=logprob, prob=math.exp(logprob))
        queries.append(row)
    usage = _sum_usage(queries, modes)
    usage.update(
        {"http_requests": ledger.http_requests, "retries": ledger.retries, "status_counts": ledger.status_counts}
    )
    scorers = {"free": FREE_GREEDY, "constrained": endpoint_scorer(system.provider) or "none"}
    return Answers(system.name, model, preds, queries, wall, notes, usage, scorers={m: scorers[m] for m in modes})


def _sum_usage(queries: list[dict], modes: dict) -> dict:
    totals = {
        "input_tokens": 0,
        "output_tokens": 0,
        "fresh_input_tokens": 0,
        "fresh_output_tokens": 0,
        "reasoning_tokens": 0,  # the part of output_tokens the model spent thinking, where the usage says
        "reasoning_reported": 0,  # answers whose usage reported it
        "requests": 0,
        "cache_hits": 0,
        "latency_s": [],
    }
    for row in queries:
        for mode in modes:
            u = row[mode].get("usage") or {}
            if not u:
                continue
            i, o = u.get("input_tokens") or 0, u.get("output_tokens") or 0
            totals["requests"] += 1
            totals["input_tokens"] += i
            totals["output_tokens"] += o
            if u.get("reasoning_tokens") is not None:
                totals["reasoning_tokens"] += u["reasoning_tokens"]
                totals["reasoning_reported"] += 1
            if u.get("cached"):
                totals["cache_hits"] += 1
            else:
                totals["fresh_input_tokens"] += i
                totals["fresh_output_tokens"] += o
            if u.get("latency_s") is not None:
                totals["latency_s"].append(u["latency_s"])
    lat = sorted(totals.pop("latency_s"))
    totals["latency_s"] = (
        {"mean": round(sum(lat) / len(lat), 4), "p50": round(lat[len(lat) // 2], 4), "max": round(lat[-1], 4)}
        if lat
        else None
    )
    return totals
