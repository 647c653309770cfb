"""The user's task as queries (+ label set for classification), and the lm-eval tasks generated from it.

Two kinds: classification (each record's final assistant turn is a label) and generation (it is a free-text
reference, scored by a metric the user picks: chrF, BLEU, ROUGE-L or exact match).

Every system sees the same prompt: the record's own chat messages (everything before the final assistant turn),
rendered by the model's chat template for local models and sent as `messages` to endpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offramp.data import (
    BUILTIN,
    NotUtf8,
    builtin_splits,
    load_chat_jsonl,
    looks_like_labels,
    per_label_subset,
    record_label,
    record_prompt,
    system_prompt,
    to_chat,
)
from offramp.errors import OfframpError

# Free generation stops at the first newline: a label is one line, and this keeps chatty models cheap.
STOP = ["\n"]
KINDS = ("classification", "generation")


@dataclass(frozen=True)
class Query:
    id: int
    messages: list[dict]  # the prompt: system/user turns, no final answer
    label: str  # the final assistant turn: a label (classification) or the reference text (generation)

    @property
    def reference(self) -> str:
        return self.label


@dataclass(frozen=True)
class EvalTask:
    name: str
    queries: list[Query]
    labels: list[str]  # empty for generation tasks
    source: str
    kind: str = "classification"
    metric: str | None = None  # generation: the headline metric
    max_gen_toks: int | None = None  # None: derived from the longest label / reference

    @property
    def max_label_chars(self) -> int:
        return max(len(t) for t in self.labels or [q.label for q in self.queries])

    def gen_toks(self) -> int:
        """Tokens a free answer may take: a label or reference costs at most ~1 token per 2 characters in the
        tokenizers we know; leave room for chatter. Generation answers are capped at 1024 unless asked for more."""
        if self.max_gen_toks is not None:
            return self.max_gen_toks
        n = max(16, self.max_label_chars // 2 + 12)
        return min(1024, max(32, n)) if self.kind == "generation" else n


def _stable(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()


def _limit_records(records: list[dict], per_label: int | None, seed: int) -> list[dict]:
    if per_label is None:
        return records
    by_label: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_label[record_label(rec)].append(rec)
    chosen = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: _stable(seed, json.dumps(r["messages"], sort_keys=True)))
        chosen.extend(group[:per_label])
    return chosen


def _labels_file(path: Path) -> list[str] | None:
    cand = path.with_name("labels.json")
    if not cand.is_file():
        return None
    try:
        labels = json.loads(cand.read_text(encoding="utf-8"))
    except ValueError as e:
        raise OfframpError(f"{cand}: not valid JSON ({e})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise OfframpError(f"{cand}: expected a non-empty JSON list of label strings")
    return [x.strip() for x in labels]


def load_task(
    task: str,
    *,
    per_label: int | None = None,
    seed: int = 0,
    kind: str = "classification",
    metric: str | None = None,
    max_gen_toks: int | None = None,
) -> EvalTask:
    """`banking77` (the vendored test split) or a chat JSONL whose last assistant turn is each record's label
    (classification) or reference answer (generation)."""
    from offramp.evals.metrics import DEFAULT_GEN_METRIC, GEN_METRICS

    if kind not in KINDS:
        raise OfframpError(f"unknown task type {kind!r}; use {' or '.join(KINDS)}")
    if per_label is not None and per_label < 1:
        raise OfframpError("--limit-per-label must be at least 1")
    if max_gen_toks is not None and max_gen_toks < 1:
        raise OfframpError("--max-gen-toks must be at least 1")
    if kind == "classification" and metric is not None:
        raise OfframpError(
            f"--metric {metric} is for generation tasks (--task-type generation); classification reports "
            "accuracy and macro-F1"
        )
    if kind == "generation":
        metric = metric or DEFAULT_GEN_METRIC
        if metric not in GEN_METRICS:
            raise OfframpError(f"unknown metric {metric!r} for a generation task; use one of {', '.join(GEN_METRICS)}")
        if per_label is not None:
            raise OfframpError("--limit-per-label needs labels: it is for classification tasks, not generation")
    if task in BUILTIN:
        if kind != "classification":
            raise OfframpError(f"{task} is a classification task; drop --task-type generation")
        _, test, labels = builtin_splits(task)
        system = system_prompt(labels, "short")
        records = [to_chat(e, system) for e in per_label_subset(test, per_label, seed)]
        name, source = task, f"built-in {task} test split"
    else:
        path = Path(task)
        if not path.is_file():
            known = ", ".join(sorted(BUILTIN))
            raise OfframpError(f"unknown task {task!r}: not a built-in task ({known}) and no such file")
        if path.suffix != ".jsonl":
            raise OfframpError(f"{path}: a task file must be chat JSONL (.jsonl), see `offramp data prepare`")
        what = "label" if kind == "classification" else "reference answer"
        try:
            records = load_chat_jsonl(path)
        except NotUtf8:
            raise
        except OfframpError as e:
            raise OfframpError(f"{e} (a task file needs each record's {what} as its final assistant turn)") from None
        name, source = _prepared_task_name(path) or path.stem, str(path.resolve())
        if kind == "generation":
            labels = []
        else:
            declared = _labels_file(path)
            distinct = {record_label(r) for r in records}
            if declared is None and not looks_like_labels([record_label(r) for r in records]):
                raise OfframpError(
                    f"{path}: {len(distinct)} distinct answers in {len(records)} records and no labels.json beside "
                    "it: this looks like free text, not labels; use --task-type generation (with --metric)"
                )
            records = _limit_records(records, per_label, seed)
            labels = declared or sorted(distinct)
    queries = [Query(i, record_prompt(r), record_label(r)) for i, r in enumerate(records)]
    empty = [q.id for q in queries if not q.label]
    if empty:
        what = "label" if kind == "classification" else "reference answer"
        raise OfframpError(f"{task}: record {empty[0]} has an empty {what} (final assistant turn)")
    if kind == "generation":
        return EvalTask(name, queries, [], source, kind="generation", metric=metric, max_gen_toks=max_gen_toks)
    unknown = sorted({q.label for q in queries} - set(labels))
    if unknown:
        raise OfframpError(f"{task}: labels not in labels.json: {unknown[:5]}")
    if len(labels) < 2:
        raise OfframpError(f"{task}: a classification task needs at least 2 labels, found {labels}")
    return EvalTask(name=name, queries=queries, labels=labels, source=source, max_gen_toks=max_gen_toks)


def _prepared_task_name(path: Path) -> str | None:
    """The task a `data prepare` split belongs to, named after its source (not `test`), from the report beside it."""
    report = path.with_name("data_report.json")
    if not report.is_file():
        return None
    from offramp.artifacts import load_report

    return load_report(report, "data").task


# ---- lm-eval tasks -------------------------------------------------------------------------------------------


def _docs(task: EvalTask) -> list[dict[str, Any]]:
    return [
        {
            "qid": q.id,
            "prompt": json.dumps(q.messages, ensure_ascii=False),
            "label": q.label,
            **({"gold": task.labels.index(q.label)} if task.labels else {}),
        }
        for q in task.queries
    ]


def build_lm_eval_tasks(task: EvalTask, modes: dict[str, dict | None], *, choice_suffix: str = "") -> list:
    """One lm-eval task per scoring mode.

    `modes` maps a mode name to its generation kwargs (generate_until), or to None for `multiple_choice`
    (log-likelihood of each label after the prompt: the local models' constrained mode). `choice_suffix` (the
    model's end-of-turn token) is appended to every label, so a label that is a prefix of another wins only if
    the model would stop there.
    """
    import datasets
    from lm_eval.api.task import ConfigurableTask

    class ChatTask(ConfigurableTask):
        """Renders each doc's own chat messages (system, few-shot turns, user) instead of lm-eval's Q/A layout."""

        def fewshot_context(
            self,
            doc,
            num_fewshot=0,
            system_instruction=None,
            apply_chat_template=False,
            fewshot_as_multiturn=False,
            chat_template=None,
            gen_prefix=None,
        ):
            messages = json.loads(doc["prompt"])
            if apply_chat_template and chat_template is not None:
                return chat_template(messages)
            return "\n\n".join(m["content"] for m in messages) + "\n"

    docs = _docs(task)

    def dataset(**_: Any) -> dict:
        return {"test": datasets.Dataset.from_list(docs)}

    out = []
    for mode, gen_kwargs in modes.items():
        common = {
            "task": f"offramp_{mode}",
            "custom_dataset": dataset,
            "test_split": "test",
            "doc_to_text": "prompt",
            "metadata": {"version": 1},
        }
        if gen_kwargs is None:
            config = {
                **common,
                "output_type": "multiple_choice",
                "doc_to_target": "gold",
                "doc_to_choice": [label + choice_suffix for label in task.labels],
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        else:
            config = {
                **common,
                "output_type": "generate_until",
                "doc_to_target": "label",
                "generation_kwargs": gen_kwargs,
                "metric_list": [
                    {
                        "metric": "exact_match",
                        "aggregation": "mean",
                        "higher_is_better": True,
                        "ignore_case": True,
                        "ignore_punctuation": True,
                    }
                ],
            }
        out.append(ChatTask(config=config))
    return out
