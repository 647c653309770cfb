"""Read API traffic logs into `Call`s: OpenAI Batch API input + output files, SDK request/response logs, chat JSONL.

Formats (detected per file from its first non-blank line, or forced with --format):
- `batch-input`: the Batch API's input file, lines `{"custom_id", "method", "url", "body"}`;
- `batch-output`: its output (or error) file, lines `{"id", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error"}`; matched to input lines by `custom_id` across all the files given;
- `sdk`: `{"request": <chat.completions body>, "response": <chat.completion>}` per line, as SDK loggers write them
  (each side may also be wrapped as `{"body": …}`); optional `timestamp`/`created`, `latency_ms`, `status`;
- `chat`: `{"messages": [… , {"role": "assistant", …}]}` whose last assistant turn is the answer. Such a file has no
  usage, so its tokens are stored as unknown (NULL) rather than estimated: a tokenizer other than the vendor's
  would count differently, and a guess would then be priced as if billed. Its calls are therefore unpriced.

A call's time is its response's `created` (unix seconds) when there is one, else the record's `timestamp`/`created`,
else the import time (`time_source = "import"`: the report leaves such calls out of its rates).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offramp.traffic.store import Call, canonical

FORMATS = ("auto", "batch-input", "batch-output", "sdk", "chat")


class BadLine(ValueError):
    """A line that cannot be imported; the message is the reason."""


@dataclass
class ImportResult:
    calls: list[Call] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # "file:line: reason"
    warnings: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file -> format


def detect(first: Any) -> str | None:
    if not isinstance(first, dict):
        return None
    if "custom_id" in first and "body" in first and ("method" in first or "url" in first):
        return "batch-input"
    if "custom_id" in first and ("response" in first or "error" in first):
        return "batch-output"
    if "request" in first and "response" in first:
        return "sdk"
    if "messages" in first:
        return "chat"
    return None


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadLine(f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise BadLine(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadLine(f"a JSON {type(obj).__name__}, not an object")
    return obj


def _unwrap(obj: Any, what: str) -> dict:
    if isinstance(obj, dict) and "body" in obj and isinstance(obj["body"], dict) and "messages" not in obj:
        obj = obj["body"]
    if not isinstance(obj, dict):
        raise BadLine(f"{what} is not a JSON object")
    return obj


def _check_request(req: Any) -> dict:
    if not isinstance(req, dict):
        raise BadLine("the request body is not a JSON object")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadLine("the request has no messages list (only chat completions are imported)")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise BadLine(f"messages[{i}] has no role")
    return req


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return None


def answer_of(body: dict) -> str | None:
    """A chat.completion's first choice: its text, or its tool calls as JSON."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadLine("the response has no choices")
    msg = choices[0].get("message") or {}
    if not isinstance(msg, dict):
        raise BadLine("choices[0].message is not an object")
    text = _text(msg.get("content"))
    if text is None and msg.get("tool_calls"):
        return canonical(msg["tool_calls"])
    return text


def _int(x: Any, what: str) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise BadLine(f"usage.{what} is not a non-negative integer: {x!r}")
    return x


def usage_of(body: dict) -> dict[str, int | None]:
    u = body.get("usage")
    if u is None:
        return {}
    if not isinstance(u, dict):
        raise BadLine("usage is not an object")
    pd = u.get("prompt_tokens_details") or {}
    cd = u.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": _int(u.get("prompt_tokens"), "prompt_tokens"),
        "completion_tokens": _int(u.get("completion_tokens"), "completion_tokens"),
        "cached_tokens": _int(pd.get("cached_tokens"), "prompt_tokens_details.cached_tokens")
        if isinstance(pd, dict)
        else None,
        "reasoning_tokens": _int(cd.get("reasoning_tokens"), "completion_tokens_details.reasoning_tokens")
        if isinstance(cd, dict)
        else None,
    }


def _time(*candidates: Any) -> tuple[dt.datetime, str] | None:
    for value, source in candidates:
        if value is None:
            continue
        if isinstance(value, bool):
            raise BadLine(f"{source} is not a time: {value!r}")
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, dt.UTC), source
        if isinstance(value, str):
            try:
                t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise BadLine(f"{source} is not an ISO time: {value!r}") from None
            return (t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)), source
        raise BadLine(f"{source} is not a time: {value!r}")
    return None


def tag_of(request: dict, record: dict | None = None) -> str | None:
    """X-Offramp-Tag (a log's headers), else the request's metadata.tag, else its user field."""
    headers = (record or {}).get("headers") or (record or {}).get("request_headers") or {}
    if isinstance(headers, dict):
        for k, v in headers.items():
            if k.lower() == "x-offramp-tag" and v:
                return str(v)
    md = request.get("metadata")
    if isinstance(md, dict) and md.get("tag"):
        return str(md["tag"])
    return str(request["user"]) if request.get("user") else None


def _call(
    *,
    source: str,
    request: dict,
    response: dict | None,
    answer: str | None,
    record: dict | None,
    when: tuple[dt.datetime, str] | None,
    now: dt.datetime,
    **extra: Any,
) -> Call:
    usage = usage_of(response) if response else {}
    t, ts = when or (now, "import")
    model = (response or {}).get("model") or request.get("model")
    return Call(
        request=request,
        response=response,
        answer=answer,
        source=source,
        time=t,
        time_source=ts,
        model=str(model) if model else None,
        tag=tag_of(request, record),
        **usage,
        **extra,
    )


def parse_sdk(obj: dict, now: dt.datetime) -> Call:
    req = _check_request(_unwrap(obj.get("request"), "request"))
    resp_raw = obj.get("response")
    status = obj.get("status", obj.get("status_code"))
    if isinstance(resp_raw, dict) and "status_code" in resp_raw and status is None:
        status = resp_raw["status_code"]
    resp = _unwrap(resp_raw, "response")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise BadLine(f"status is not an HTTP status code: {status!r}")
    failed = status is not None and not 200 <= status < 300
    answer = None if failed else answer_of(resp)
    latency = obj.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0):
        raise BadLine(f"latency_ms is not a duration: {latency!r}")
    return _call(
        source="sdk-log",
        request=req,
        response=resp,
        answer=answer,
        record=obj,
        when=_time(
            (resp.get("created"), "response.created"), (obj.get("timestamp"), "record"), (obj.get("created"), "record")
        ),
        now=now,
        status=status if status is not None else 200,
        latency_ms=float(latency) if latency is not None else None,
        provider=obj.get("provider"),
        upstream=obj.get("url") or obj.get("base_url"),
        error=str(resp["error"]) if failed and resp.get("error") else None,
    )


def parse_chat(obj: dict, now: dt.datetime) -> Call:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadLine("no messages list")
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise BadLine("the last message is not an assistant turn (the answer)")
    answer = _text(last.get("content"))
    if answer is None:
        raise BadLine("the last assistant turn has no text content")
    request = {k: v for k, v in obj.items() if k not in ("messages", "timestamp", "created", "headers")}
    request = _check_request({**request, "messages": msgs[:-1]})
    return _call(
        source="chat-jsonl",
        request=request,
        response=None,
        answer=answer,
        record=obj,
        when=_time((obj.get("timestamp"), "record"), (obj.get("created"), "record")),
        now=now,
    )


def _batch_input(obj: dict) -> tuple[str, dict]:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise BadLine("no custom_id")
    url = obj.get("url", "")
    if url and not str(url).endswith("/chat/completions"):
        raise BadLine(f"url {url}: only /v1/chat/completions batches are imported")
    return cid, {"url": url, "body": _check_request(obj.get("body"))}


def _batch_output(obj: dict) -> str:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise BadLine("no custom_id")
    resp = obj.get("response")
    if resp is None and not obj.get("error"):
        raise BadLine("neither a response nor an error")
    if resp is not None and (not isinstance(resp, dict) or not isinstance(resp.get("body"), dict)):
        raise BadLine("response has no body object")
    return cid


def batch_call(inp: dict, out: dict, now: dt.datetime) -> Call:
    resp = out.get("response") or {}
    body = resp.get("body") if isinstance(resp.get("body"), dict) else None
    status = resp.get("status_code")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise BadLine(f"response.status_code is not an HTTP status: {status!r}")
    err = out.get("error") or (body.get("error") if body else None)
    failed = bool(err) or (status is not None and not 200 <= status < 300)
    return _call(
        source="openai-batch",
        request=inp["body"],
        response=body,
        answer=None if failed or body is None else answer_of(body),
        record=None,
        when=_time(((body or {}).get("created"), "response.created")),
        now=now,
        custom_id=out["custom_id"],
        status=status,
        error=canonical(err) if isinstance(err, dict | list) else (str(err) if err else None),
        provider="openai",
        upstream=inp["url"] or None,
    )


def read_files(paths: list[Path], fmt: str = "auto", *, now: dt.datetime | None = None) -> ImportResult:
    """Parse every file; bad lines are collected as `file:line: reason`, never half-imported."""
    now = now or dt.datetime.now(dt.UTC)
    res = ImportResult()
    inputs: dict[str, tuple[dict, str]] = {}  # custom_id -> (input, where)
    outputs: list[tuple[dict, str]] = []
    for path in paths:
        try:
            lines = _lines(Path(path))
        except BadLine as e:
            res.bad.append(f"{path}: {e}")
            continue
        file_fmt = fmt
        if fmt == "auto":
            first = None
            for _, line in lines:
                try:
                    first = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
            file_fmt = detect(first) or ""
            if not file_fmt:
                where = f"{path}:{lines[0][0]}" if lines else str(path)
                res.bad.append(f"{where}: format not recognised (give --format: {', '.join(FORMATS[1:])})")
                continue
        res.formats[str(path)] = file_fmt
        for n, line in lines:
            where = f"{path}:{n}"
            try:
                obj = _json(line)
                if file_fmt == "batch-input":
                    cid, inp = _batch_input(obj)
                    if cid in inputs:
                        raise BadLine(f"custom_id {cid} already given at {inputs[cid][1]}")
                    inputs[cid] = (inp, where)
                elif file_fmt == "batch-output":
                    _batch_output(obj)
                    outputs.append((obj, where))
                elif file_fmt == "sdk":
                    res.calls.append(parse_sdk(obj, now))
                else:
                    res.calls.append(parse_chat(obj, now))
            except BadLine as e:
                res.bad.append(f"{where}: {e}")
    seen: set[str] = set()
    for out, where in outputs:
        cid = out["custom_id"]
        if cid in seen:
            res.bad.append(f"{where}: custom_id {cid} has a second output line")
            continue
        seen.add(cid)
        if cid not in inputs:
            res.bad.append(f"{where}: custom_id {cid} has no line in the batch input files given (mismatched pair)")
            continue
        try:
            res.calls.append(batch_call(inputs[cid][0], out, now))
        except BadLine as e:
            res.bad.append(f"{where}: {e}")
    missing = [cid for cid in inputs if cid not in seen]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        res.warnings.append(
            f"{len(missing)} batch input line(s) have no output line (mismatched pair: not imported): {shown}"
        )
    _number_repeats(res.calls)
    return res


def _number_repeats(calls: list[Call]) -> None:
    """Identical calls within one import are distinct calls: number them so their dedup keys differ."""
    counts: Counter[str] = Counter()
    for c in calls:
        base = c.key()
        c.occurrence = counts[base]
        counts[base] += 1
