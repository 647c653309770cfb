import json
import re
from collections import Counter
from pathlib import Path

import pytest

from offramp.data import load_chat_jsonl, load_labels, prepare, record_label
from offramp.errors import OfframpError


def _labels(path: Path) -> Counter:
    return Counter(record_label(r) for r in load_chat_jsonl(path))


def test_banking77_subset_counts_and_labels(tmp_path):
    report = prepare("banking77", tmp_path / "b77", per_label=20, test_per_label=3)
    train, test = _labels(tmp_path / "b77/train.jsonl"), _labels(tmp_path / "b77/test.jsonl")
    assert len(train) == len(test) == 77
    assert set(train.values()) == {20} and set(test.values()) == {3}
    assert report["train"] == 1540 and report["test"] == 231
    assert load_labels(tmp_path / "b77") == json.loads((tmp_path / "b77/labels.json").read_text())
    assert len(load_labels(tmp_path / "b77")) == 77


def test_api_prompts_carry_what_an_api_model_needs_to_answer(tmp_path):
    # The API cannot be fine-tuned here: its prompt lists every label and one training example of each (#18.2).
    prepare("banking77", tmp_path / "b", per_label=2, test_per_label=1)
    labels = load_labels(tmp_path / "b")
    api = [json.loads(x) for x in (tmp_path / "b/api_prompts.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "b/test.jsonl").read_text().splitlines()]
    assert [r["messages"][1:] for r in api] == [r["messages"][1:] for r in test]  # same queries and answers
    system = api[0]["messages"][0]["content"]
    assert {r["messages"][0]["content"] for r in api} == {system}  # one shared prefix: what the cache reuses
    train = [json.loads(x)["messages"] for x in (tmp_path / "b/train.jsonl").read_text().splitlines()]
    shots = [line for line in system.splitlines() if " => " in line]
    assert sorted(line.rsplit(" => ", 1)[1] for line in shots) == sorted(labels)
    assert all(line.rsplit(" => ", 1)[0] in {m[1]["content"] for m in train} for line in shots)


def test_banking77_full_split_matches_the_published_sizes(tmp_path):
    report = prepare("banking77", tmp_path / "full")
    assert (report["train"], report["test"], report["labels"]) == (10003, 3080, 77)


def test_prepare_is_deterministic_and_seed_dependent(tmp_path):
    a = prepare("banking77", tmp_path / "a", per_label=5, test_per_label=2, seed=1)
    b = prepare("banking77", tmp_path / "b", per_label=5, test_per_label=2, seed=1)
    c = prepare("banking77", tmp_path / "c", per_label=5, test_per_label=2, seed=2)
    assert a["train"] == b["train"] == c["train"] == 385
    read = lambda d: (tmp_path / d / "train.jsonl").read_bytes()  # noqa: E731
    assert read("a") == read("b")
    assert read("a") != read("c")


def test_records_are_openai_chat_with_label_as_answer(tmp_path):
    prepare("banking77", tmp_path / "d", per_label=1, test_per_label=1, prompt_style="labels")
    rec = json.loads((tmp_path / "d/train.jsonl").read_text().splitlines()[0])
    roles = [m["role"] for m in rec["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert "card_arrival" in rec["messages"][0]["content"]  # the labels style lists every label
    assert rec["messages"][2]["content"] in load_labels(tmp_path / "d")


def test_csv_source_gets_a_stratified_split(tmp_path):
    rows = ["text,label"] + [f"question {i} about {lab},{lab}" for lab in ("a", "b") for i in range(10)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    report = prepare(str(tmp_path / "mine.csv"), tmp_path / "out", test_fraction=0.3)
    assert (report["train"], report["test"]) == (14, 6)
    assert _labels(tmp_path / "out/test.jsonl") == Counter({"a": 3, "b": 3})


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "x"}', "missing or empty 'messages'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "messages[0]"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    good = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    f = tmp_path / "bad.jsonl"
    f.write_text(good + "\n" + line + "\n")
    with pytest.raises(OfframpError, match=rf"bad.jsonl:2: .*{re.escape(message)}"):
        load_chat_jsonl(f)


def test_empty_split_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "one.csv").write_text("text,label\nonly one,a\n")
    with pytest.raises(OfframpError, match="empty split"):
        prepare(str(tmp_path / "one.csv"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_prepare_and_validate(tmp_path, cli):
    res = cli("data", "prepare", "banking77", "--per-label", "2", "--test-per-label", "1", "--out", str(tmp_path / "x"))
    assert res.returncode == 0, res.stderr
    res = cli("data", "validate", str(tmp_path / "x/train.jsonl"))
    assert res.returncode == 0 and "154 records, 77 distinct" in res.stdout
    (tmp_path / "broken.jsonl").write_text('{"messages": []}\n')
    res = cli("data", "validate", str(tmp_path / "broken.jsonl"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"offramp: error: {tmp_path / 'broken.jsonl'}:1: missing or empty 'messages' (OpenAI chat format expected)"
    ]


def _user_dir(tmp_path: Path) -> Path:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's own file")
    return mine


# Each command that writes an --out directory, with the rest of its arguments; each refuses before its real work.
OUT_COMMANDS = {
    "data prepare": ["data", "prepare", "banking77", "--per-label", "1", "--test-per-label", "1"],
    "bench": ["bench", "http://127.0.0.1:9", "--workload", "banking77"],
    "cascade": ["cascade", "--eval", "missing.json", "--breakeven", "missing.json", "--max-escalation", "0.3"],
    "models tiny": ["models", "tiny"],
}


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_an_out_dir_offramp_did_not_write_is_never_replaced(cli, tmp_path, command):
    mine = _user_dir(tmp_path)
    res = cli(*OUT_COMMANDS[command], "--out", str(mine))
    assert res.returncode == 1 and "was not written by offramp" in res.stderr and "--force" in res.stderr
    assert "Traceback" not in res.stderr and (mine / "notes.txt").read_text() == "a user's own file"
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep")
    res = cli(*OUT_COMMANDS[command], "--out", str(a_file))
    assert res.returncode == 1 and "is a file" in res.stderr and a_file.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "report.txt"]  # no .old-PID or temp dir left


def test_data_prepare_replaces_its_own_output_and_a_user_dir_only_with_force(tmp_path, cli):
    args = OUT_COMMANDS["data prepare"]
    out = tmp_path / "data"
    assert cli(*args, "--out", str(out)).returncode == 0
    assert cli(*args, "--seed", "1", "--out", str(out)).returncode == 0  # offramp wrote it: replaced
    mine = _user_dir(tmp_path)
    res = cli(*args, "--out", str(mine), "--force")
    assert res.returncode == 0, res.stderr
    assert not (mine / "notes.txt").exists() and (mine / "train.jsonl").is_file()


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def test_a_long_csv_field_is_read_whole(tmp_path):
    # The csv module refuses fields over 128 KiB by default; a long document is a legitimate input (#15.6).
    long = "word " * 40_000  # 200 kB
    rows = [(f"question {i}", "ab"[i % 2]) for i in range(10)] + [(long.strip(), "a")]
    prepare(str(_csv(tmp_path / "long.csv", rows)), tmp_path / "out")
    recs = load_chat_jsonl(tmp_path / "out/train.jsonl") + load_chat_jsonl(tmp_path / "out/test.jsonl")
    texts = [r["messages"][1]["content"] for r in recs]
    assert long.strip() in texts


def test_questionable_data_is_prepared_with_warnings_in_the_report(tmp_path):
    one_label = prepare(str(_csv(tmp_path / "one.csv", [(f"q{i}", "a") for i in range(5)])), tmp_path / "o1")
    assert one_label["warnings"] == ["a single label ('a'): a classifier has nothing to choose between"]
    rows = [(f"q{i}", "ab"[i % 2]) for i in range(10)] + [("lonely", "z")]
    lonely = prepare(str(_csv(tmp_path / "lonely.csv", rows)), tmp_path / "o2")
    assert lonely["warnings"] == ["1 label(s) with a single example never reach the test split: 'z'"]
    assert "z" not in _labels(tmp_path / "o2/test.jsonl")
    assert json.loads((tmp_path / "o2/data_report.json").read_text())["warnings"] == lonely["warnings"]
    fine = prepare(str(_csv(tmp_path / "fine.csv", rows[:10])), tmp_path / "o3")
    assert fine["warnings"] == []


def _chat(question: str, answer: str) -> str:
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs}) + "\n"


def test_cli_warns_on_one_line_each_and_goes_on(tmp_path, cli):
    res = cli("data", "prepare", str(_csv(tmp_path / "one.csv", [(f"q{i}", "a") for i in range(5)])),
              "--out", str(tmp_path / "out"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    warnings = [x for x in res.stderr.splitlines() if "warning:" in x]
    assert warnings == [f"offramp: warning: {tmp_path / 'one.csv'}: a single label ('a'): a classifier has nothing "
                        "to choose between"]  # fmt: skip
    f = tmp_path / "empty.jsonl"
    f.write_text("".join(_chat(f"q{i}", " " if i == 2 else "ab"[i % 2]) for i in range(8)))
    res = cli("data", "validate", str(f))
    assert res.returncode == 0 and "8 records" in res.stdout
    assert res.stderr.splitlines() == [
        f"offramp: warning: {f}: 1 record(s) with an empty assistant answer (first: record 3)"
    ]


def test_free_text_answers_are_not_warned_about_as_labels(tmp_path, cli):
    f = tmp_path / "gen.jsonl"
    f.write_text("".join(_chat(f"q{i}", f"a different answer {i}") for i in range(8)))
    res = cli("data", "validate", str(f))
    assert res.returncode == 0 and res.stderr == ""


def test_cli_validate_checks_both_splits_of_a_prepared_dir(tmp_path, cli):
    out = tmp_path / "x"
    res = cli("data", "prepare", "banking77", "--per-label", "2", "--test-per-label", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    res = cli("data", "validate", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"{out / 'train.jsonl'}: 154 records, 77 distinct answers",
        f"{out / 'test.jsonl'}: 77 records, 77 distinct answers",
    ]


def test_not_utf8_names_the_line_and_byte_offset(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(_chat("ok", "a").encode() + _chat("cafX", "b").encode().replace(b"X", b"\xe9"))  # latin-1 é
    with pytest.raises(OfframpError, match=r"latin1.jsonl:2: not UTF-8 \(byte offset 1\d\d: invalid continuation"):
        load_chat_jsonl(f)
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\n".encode() + b"q1,a\nq2,b\nq3,a\nq4,b\n")
    assert prepare(str(tmp_path / "bom.csv"), tmp_path / "out", test_fraction=0.5)["labels"] == 2


def _own_prompt_jsonl(path: Path) -> Path:
    """Records with their own system prompt, some with an earlier exchange: what a team's logs hold."""
    lines = []
    for i in range(12):
        label = ("refund", "upgrade")[i % 2]
        msgs = [{"role": "system", "content": "You triage Acme tickets. Reply refund or upgrade."}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "How can I help?"}]
        msgs += [{"role": "user", "content": f"ticket {i}"}, {"role": "assistant", "content": label}]
        lines.append(json.dumps({"messages": msgs}) + "\n")
    path.write_text("".join(lines))
    return path


def test_a_chat_jsonl_keeps_its_own_system_prompt_and_turns(tmp_path):
    src = _own_prompt_jsonl(tmp_path / "tickets.jsonl")
    originals = {r["messages"][-2]["content"]: r["messages"] for r in load_chat_jsonl(src)}
    report = prepare(str(src), tmp_path / "out", test_fraction=0.25)
    written = load_chat_jsonl(tmp_path / "out/train.jsonl") + load_chat_jsonl(tmp_path / "out/test.jsonl")
    assert len(written) == 12
    for rec in written:
        assert rec["messages"] == originals[rec["messages"][-2]["content"]]  # as they were, earlier turns too
    api = load_chat_jsonl(tmp_path / "out/api_prompts.jsonl")
    assert [r["messages"] for r in api] == [r["messages"] for r in load_chat_jsonl(tmp_path / "out/test.jsonl")]
    assert "own" in report["system_prompt"] and "banking" not in (tmp_path / "out/train.jsonl").read_text()


def test_system_overrides_the_prompt_of_any_source(tmp_path, cli):
    src = _own_prompt_jsonl(tmp_path / "tickets.jsonl")
    prepare(str(src), tmp_path / "j", system="Answer refund or upgrade.")
    recs = load_chat_jsonl(tmp_path / "j/train.jsonl")
    assert {r["messages"][0]["content"] for r in recs} == {"Answer refund or upgrade."}
    assert all([m["role"] for m in r["messages"]].count("system") == 1 for r in recs)
    assert any(m["content"] == "How can I help?" for r in recs for m in r["messages"])  # earlier turns still kept
    csv_src = _csv(tmp_path / "q.csv", [(f"question {i}", "ab"[i % 2]) for i in range(10)])
    prepare(str(csv_src), tmp_path / "neutral")
    neutral = load_chat_jsonl(tmp_path / "neutral/train.jsonl")[0]["messages"][0]["content"]
    assert neutral == "Classify the query into one intent label. Answer with the label only."
    res = cli("data", "prepare", str(csv_src), "--system", "Pick a or b.", "--out", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    assert {r["messages"][0]["content"] for r in load_chat_jsonl(tmp_path / "c/test.jsonl")} == {"Pick a or b."}
    res = cli("data", "prepare", "banking77", "--per-label", "1", "--test-per-label", "1", "--system", "Intent?",
              "--out", str(tmp_path / "b"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert {r["messages"][0]["content"] for r in load_chat_jsonl(tmp_path / "b/train.jsonl")} == {"Intent?"}
