"""Task data in OpenAI chat JSONL: loading and validating it, converting CSV / JSONL into it, splitting it.

A record is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`. For classification
tasks the last assistant turn is the label.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from offramp.errors import OfframpError
from offramp.paths import atomic_dir, write_json
from offramp.reports import now_iso

ROLES = {"system", "user", "assistant"}
BUILTIN = {"banking77"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    # a chat JSONL record's own prompt (system prompt, earlier turns), kept as it was; None: a bare query (CSV)
    prompt: list[dict] | None = field(default=None, compare=False, hash=False)


def system_prompt(labels: list[str], style: str = "short", task: str = "customer banking query") -> str:
    if style == "short":
        return f"Classify the {task} into one intent label. Answer with the label only."
    if style == "labels":
        return (
            f"Classify the {task} into exactly one of these intent labels and answer with the label only.\n"
            "Labels: " + ", ".join(labels)
        )
    raise OfframpError(f"unknown system prompt style {style!r}; use short or labels")


API_PROMPT = "the label list and one training example per label (the 1-shot setting of the cited GPT-4 score)"


def api_system_prompt(labels: list[str], train: list[Example], task: str = "customer banking query") -> str:
    """The prompt an API call carries for this task: an API model cannot be fine-tuned here, so it needs the label
    list and examples (Loukas et al. 2023's 1-shot prompt, on which the cited GPT-4 score was measured)."""
    first: dict[str, str] = {}
    for e in train:
        first.setdefault(e.label, e.text)
    examples = "\n".join(f"{first[label]} => {label}" for label in labels if label in first)
    return f"{system_prompt(labels, 'labels', task)}\nOne example per label:\n{examples}"


def to_chat(ex: Example, system: str | None) -> dict:
    """`ex` as a chat record: its own prompt messages when it has them (a JSONL's), else its text as the user turn;
    a given `system` replaces the record's own system prompt (or sets one), None keeps what the record has."""
    prompt = list(ex.prompt) if ex.prompt is not None else [{"role": "user", "content": ex.text}]
    if system is not None:
        prompt = [{"role": "system", "content": system}] + [m for m in prompt if m["role"] != "system"]
    return {"messages": [*prompt, {"role": "assistant", "content": ex.label}]}


def validate_record(obj: object, where: str, *, need_assistant: bool = True) -> dict:
    if not isinstance(obj, dict):
        raise OfframpError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise OfframpError(f"{where}: missing or empty 'messages' (OpenAI chat format expected)")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise OfframpError(f"{where}: messages[{i}] needs a role in {sorted(ROLES)} and string content")
    if not any(m["role"] == "user" for m in msgs):
        raise OfframpError(f"{where}: no user turn")
    if need_assistant and msgs[-1]["role"] != "assistant":
        raise OfframpError(f"{where}: the last message must be the assistant's answer")
    return obj


class NotUtf8(OfframpError):
    """A data file with bytes that are not UTF-8: the message names the line and the byte offset."""


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its ending) of a UTF-8 file, a leading BOM dropped; streamed, not read whole."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise NotUtf8(
                    f"{path}:{n}: not UTF-8 (byte offset {offset + e.start}: {e.reason}); save the file as UTF-8"
                ) from None
            yield n, line.removeprefix("\ufeff") if n == 1 else line
            offset += len(raw)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise OfframpError(f"{path}: is a directory; expected a file")
    if not path.is_file():
        raise OfframpError(f"{path}: no such file")


def load_chat_jsonl(path: Path, *, need_assistant: bool = True) -> list[dict]:
    path = Path(path)
    _check_file(path)
    records = []
    for n, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise OfframpError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        records.append(validate_record(obj, f"{path}:{n}", need_assistant=need_assistant))
    if not records:
        raise OfframpError(f"{path}: no records")
    return records


def record_label(rec: dict) -> str:
    return rec["messages"][-1]["content"].strip()


def check_record_labels(records: list[dict], labels: list[str], source: str, label_source: str) -> None:
    """Every record's answer must be one of `labels` (a classifier's classes, named by `label_source`)."""
    known = set(labels)
    for n, rec in enumerate(records, 1):
        if record_label(rec) not in known:
            raise OfframpError(f"{source}: record {n} has label {record_label(rec)!r}, which is not in {label_source}")


def looks_like_labels(answers: list[str]) -> bool:
    """Few distinct answers for many records: classification labels, not free-text references."""
    return len(set(answers)) <= max(4, len(answers) // 2)


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(map(repr, names[:n])) + (f" … (+{len(names) - n})" if len(names) > n else "")


def answer_warnings(answers: list[str], *, split: bool) -> list[str]:
    """Questionable but usable data: a single label, labels seen once, empty answers. `split`: the data is about
    to be split into train and test (`data prepare`), where a label seen once never reaches the test split."""
    out = []
    empty = [i for i, a in enumerate(answers, 1) if not a]
    if empty:
        out.append(f"{len(empty)} record(s) with an empty assistant answer (first: record {empty[0]})")
    if not (split or looks_like_labels(answers)):
        return out  # free-text references: distinct answers are expected
    counts = Counter(a for a in answers if a)
    if len(counts) == 1:
        out.append(f"a single label ({next(iter(counts))!r}): a classifier has nothing to choose between")
    once = sorted(label for label, n in counts.items() if n == 1)
    if once and len(counts) > 1:
        where = " never reach the test split" if split else ""
        out.append(f"{len(once)} label(s) with a single example{where}: {_some(once)}")
    return out


def warn(message: str) -> None:
    """One line on stderr; the command goes on."""
    print(f"offramp: warning: {message}", file=sys.stderr)


def validate_targets(path: Path) -> list[Path]:
    """The files `data validate PATH` checks: PATH, or the splits `data prepare` wrote into the directory PATH."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    found = [path / name for name in ("train.jsonl", "test.jsonl") if (path / name).is_file()]
    if not found:
        raise OfframpError(
            f"{path}: is a directory with no train.jsonl or test.jsonl; give a chat JSONL file, or a directory "
            "`offramp data prepare` wrote"
        )
    return found


def record_prompt(rec: dict) -> list[dict]:
    """The messages the model sees: everything before the final assistant answer."""
    return rec["messages"][:-1]


def write_jsonl(path: Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _stable_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()


def per_label_subset(examples: list[Example], per_label: int | None, seed: int) -> list[Example]:
    """Deterministic: per label, the `per_label` examples with the smallest seeded hash; order shuffled by hash."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    chosen = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda e: _stable_key(seed, e.text))
        chosen.extend(group if per_label is None else group[:per_label])
    return sorted(chosen, key=lambda e: _stable_key(seed + 1, e.label + "\0" + e.text))


def stratified_split(examples: list[Example], test_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if not 0 < test_fraction < 1:
        raise OfframpError(f"test fraction must be in (0, 1), got {test_fraction}")
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    train, test = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda e: _stable_key(seed, e.text))
        k = max(1, round(len(group) * test_fraction)) if len(group) > 1 else 0
        test.extend(group[:k])
        train.extend(group[k:])
    return train, test


# The csv module's default (128 KiB a field) refuses long documents, which are legitimate task inputs.
CSV_FIELD_LIMIT = 2**31 - 1


def read_csv(path: Path, text_col: str, label_col: str) -> list[Example]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.DictReader(line for _, line in utf8_lines(path))
    try:
        out = _csv_examples(path, reader, text_col, label_col)
    except csv.Error as e:
        raise OfframpError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    if not out:
        raise OfframpError(f"{path}: no rows")
    return out


def _csv_examples(path: Path, reader: csv.DictReader, text_col: str, label_col: str) -> list[Example]:
    cols = reader.fieldnames or []
    for c in (text_col, label_col):
        if c not in cols:
            raise OfframpError(f"{path}: no column {c!r} (columns: {', '.join(cols)})")
    out = []
    for row in reader:
        text, label = (row[text_col] or "").strip(), (row[label_col] or "").strip()
        if not text or not label:
            raise OfframpError(f"{path}:{reader.line_num}: empty {text_col if not text else label_col}")
        out.append(Example(text, label))
    return out


def read_examples(path: Path, text_col: str = "text", label_col: str = "label") -> list[Example]:
    path = Path(path)
    _check_file(path)
    if path.suffix == ".csv":
        return read_csv(path, text_col, label_col)
    if path.suffix in (".jsonl", ".json"):
        out = []
        for rec in load_chat_jsonl(path):
            users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
            out.append(Example(users[-1], record_label(rec), record_prompt(rec)))
        return out
    raise OfframpError(f"{path}: expected .csv or .jsonl")


def builtin_dir(name: str) -> Path:
    return Path(str(resources.files("offramp.datasets") / name))


def builtin_splits(name: str) -> tuple[list[Example], list[Example], list[str]]:
    if name != "banking77":
        raise OfframpError(f"unknown built-in task {name!r}; known: {', '.join(sorted(BUILTIN))}")
    d = builtin_dir(name)
    labels = json.loads((d / "categories.json").read_text())
    return read_csv(d / "train.csv", "text", "category"), read_csv(d / "test.csv", "text", "category"), labels


def task_name(source: str) -> str:
    """A task's name: a built-in's own name, captured traffic's tag, else its source file's stem (not the split
    file's `test`)."""
    if source.startswith("traffic:"):
        from offramp.traffic.dataset import default_name, parse_source

        return default_name(parse_source(source))
    return source if source in BUILTIN else Path(source).stem


def prepare(
    source: str,
    out: Path,
    *,
    per_label: int | None = None,
    test_per_label: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    prompt_style: str = "short",
    text_col: str = "text",
    label_col: str = "label",
    system: str | None = None,
    overwrite: bool = True,
    force: bool = False,
) -> dict:
    """Write train.jsonl, test.jsonl, labels.json and data_report.json into `out` (atomically)."""
    if per_label is not None and per_label < 1 or test_per_label is not None and test_per_label < 1:
        raise OfframpError("--per-label and --test-per-label must be at least 1")
    if source in BUILTIN:
        train, test, labels = builtin_splits(source)
        warnings = []
        origin = f"built-in {source} (vendored, see offramp/datasets/{source}/README.md)"
    else:
        examples = read_examples(Path(source), text_col, label_col)
        warnings = answer_warnings([e.label for e in examples], split=True)
        train, test = stratified_split(examples, test_fraction, seed)
        labels = sorted({e.label for e in examples})
        origin = str(Path(source).resolve())
    train = per_label_subset(train, per_label, seed)
    test = per_label_subset(test, test_per_label, seed)
    if not train or not test:
        raise OfframpError(f"empty split (train {len(train)}, test {len(test)}): give more data per label")
    unknown = {e.label for e in train + test} - set(labels)
    if unknown:
        raise OfframpError(f"labels not in the label set: {sorted(unknown)[:5]}")
    system_given = system is not None
    if system is not None and not system.strip():
        raise OfframpError("--system is empty; leave it out for the source's own (or the neutral) prompt")
    own = train[0].prompt is not None  # a chat JSONL: its records keep their own prompts
    subject = "customer banking query" if source in BUILTIN else "query"  # a user's task is not about banking
    if system is None and not own:
        system = system_prompt(labels, prompt_style, subject)
    with atomic_dir(Path(out), overwrite=overwrite, force=force) as tmp:
        n_train = write_jsonl(tmp / "train.jsonl", (to_chat(e, system) for e in train))
        n_test = write_jsonl(tmp / "test.jsonl", (to_chat(e, system) for e in test))
        write_jsonl(tmp / "api_prompts.jsonl", api_prompts(test, train, labels, subject))
        write_json(tmp / "labels.json", labels)
        report = {
            "stage": "data",
            "created_at": now_iso(),
            "task": task_name(source),  # eval names the task after its source
            "source": origin,
            "seed": seed,
            "per_label": per_label,
            "test_per_label": test_per_label,
            "prompt_style": prompt_style,
            "system_prompt": _system_origin(system_given, own),
            "api_prompts": {"file": "api_prompts.jsonl", "template": API_OWN if own else API_PROMPT},
            "labels": len(labels),
            "train": n_train,
            "test": n_test,
            "train_labels": len({e.label for e in train}),
            "test_labels": len({e.label for e in test}),
            "min_train_per_label": min(Counter(e.label for e in train).values()),
            "warnings": warnings,
        }
        write_json(tmp / "data_report.json", report)
    return report


API_OWN = "each test record's own messages, as the JSONL holds them (what the API is sent today)"


def api_prompts(test: list[Example], train: list[Example], labels: list[str], subject: str) -> Iterator[dict]:
    """The test queries as the API would be sent them: a record's own prompt when it has one, else the label list
    with one example per label (an API model is not fine-tuned here)."""
    api_system = api_system_prompt(labels, train, subject)
    for e in test:
        yield to_chat(e, None) if e.prompt is not None else to_chat(e, api_system)


def _system_origin(given: bool, own: bool) -> str:
    if given:
        return "--system (replaces any system prompt of the source)"
    if own:
        return "each record's own (the JSONL's messages as they were)"
    return "offramp's neutral prompt (--prompt-style)"


def load_labels(data_dir_or_file: Path) -> list[str]:
    p = Path(data_dir_or_file)
    cand = p / "labels.json" if p.is_dir() else p.with_name("labels.json")
    if cand.is_file():
        return json.loads(cand.read_text())
    recs = load_chat_jsonl(p if p.is_file() else p / "train.jsonl")
    return sorted({record_label(r) for r in recs})


def label_list(ref: str, flag: str) -> list[str]:
    """A command-line label set: `banking77`, or a JSON file holding a non-empty list of label strings (e.g. the
    labels.json `offramp data prepare` writes). `flag` names the option in the error."""
    if ref == "banking77":
        return json.loads((builtin_dir("banking77") / "categories.json").read_text())
    path = Path(ref)
    if not path.is_file():
        raise OfframpError(f"{flag} {ref}: no such file (a JSON list of labels, or banking77)")
    try:
        labels = json.loads(path.read_text())
    except ValueError as e:
        raise OfframpError(f"{flag} {path}: not valid JSON ({e})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise OfframpError(f"{flag} {path}: expected a non-empty JSON list of label strings")
    return labels
