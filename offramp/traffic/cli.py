"""`offramp traffic import` / `offramp traffic report`: fill the traffic store from logs, and size what is in it."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from offramp.errors import OfframpError

Opt = typer.Option
console = Console(stderr=True)
STORE_HELP = "a SQLite file path, or a postgresql://user@host/db URL"


def parse_time(value: str | None, flag: str) -> dt.datetime | None:
    """ISO date or datetime; a time without a zone is UTC."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise OfframpError(f"{flag} {value!r}: not an ISO date or time (e.g. 2026-11-30, 2026-11-30T12:00Z)") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def register(app: typer.Typer) -> None:
    traffic_app = typer.Typer(
        help="The traffic store: import API call logs, report volume, peaks, tokens, spend, caching headroom.",
        no_args_is_help=True,
    )
    app.add_typer(traffic_app, name="traffic")
    app.command("capture", help=CAPTURE_HELP)(_capture)

    @traffic_app.command("import")
    def import_(
        files: Annotated[list[Path], typer.Argument(help="JSONL files: Batch API input + output, SDK logs, chat")],
        store: Annotated[str, Opt(help=STORE_HELP)],
        skip_bad: Annotated[bool, Opt(help="skip (and count) lines that cannot be imported")] = False,
        tag: Annotated[str | None, Opt(help="tag every imported call (overrides the records' own tags)")] = None,
        fmt: Annotated[
            str, Opt("--format", help="auto, batch-input, batch-output, sdk or chat (auto: per file)")
        ] = "auto",
    ) -> None:
        """Import API calls into the store in ONE transaction; the same call imported twice is stored once."""
        from offramp.traffic.importers import FORMATS, read_files
        from offramp.traffic.store import open_store

        if fmt not in FORMATS:
            raise OfframpError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
        res = read_files(files, fmt)
        if res.bad and not skip_bad:
            more = f" (and {len(res.bad) - 1} more bad lines)" if len(res.bad) > 1 else ""
            raise OfframpError(f"{res.bad[0]}{more}; nothing imported (--skip-bad skips such lines)")
        for w in res.warnings:  # plain lines, never wrapped: file:line stays greppable
            print(f"offramp: warning: {w}", file=sys.stderr)
        if tag is not None:
            for c in res.calls:
                c.tag = tag
        with open_store(store) as s:
            added, already = s.record_many(res.calls)
        for line in res.bad[:5]:
            print(f"offramp: skipped {line}", file=sys.stderr)
        if len(res.bad) > 5:
            print(f"offramp: skipped {len(res.bad) - 5} more bad lines", file=sys.stderr)
        formats = ", ".join(f"{Path(f).name}: {k}" for f, k in res.formats.items())
        print(f"{s.name}: added {added}, already there {already}, skipped {len(res.bad)} bad lines ({formats})")

    @traffic_app.command("report")
    def report_(
        store: Annotated[str, Opt(help=STORE_HELP)],
        out: Annotated[Path, Opt(help="write report.json + report.html into this directory")],
        tag: Annotated[str | None, Opt(help="only calls with this tag")] = None,
        model: Annotated[str | None, Opt(help="only calls of this model (as the API reported it)")] = None,
        since: Annotated[str | None, Opt(help="from this UTC time on (ISO), inclusive")] = None,
        until: Annotated[str | None, Opt(help="up to this UTC time (ISO), exclusive")] = None,
        max_labels: Annotated[int, Opt(help="at most this many distinct answers make a classification")] = 100,
        force: Annotated[bool, Opt(help="replace --out even if offramp did not write it")] = False,
    ) -> None:
        """Per tag and model: volume and peaks, tokens, spend (measured and per month), duplicates, shared
        prefixes vs vLLM's prefix cache, and whether the answers are a small label set."""
        from offramp.paths import check_out
        from offramp.traffic import report as rep
        from offramp.traffic.store import open_store

        t0, t1 = parse_time(since, "--since"), parse_time(until, "--until")
        if t0 and t1 and t1 <= t0:
            raise OfframpError(f"--until {until} is not after --since {since}")
        if max_labels < 1:
            raise OfframpError("--max-labels must be at least 1")
        check_out(out, force=force)
        with open_store(store, create=False) as s:
            body = rep.build(s, tag=tag, model=model, since=t0, until=t1, max_labels=max_labels)
        rep.write(out, body, force=force)
        Console().print(summary_table(body))
        console.print(f"[green]wrote[/] {out / 'report.json'}, {out / 'report.html'}")


CAPTURE_HELP = """Record the API calls your services make: an OpenAI-compatible proxy in front of --upstream.

Point your client's base_url at http://HOST:PORT/v1. Every request is forwarded unchanged and answered with
exactly what the upstream returned (status, body, stream events); each call is committed to --store before its
answer's last bytes leave, so an answered call is never lost, also on kill -9 (the price: one fsync per call on
SQLite). If recording fails the call still succeeds (offramp_capture_record_failures_total on /metrics).

The upstream key comes from OPENAI_API_KEY / ANTHROPIC_API_KEY (or OFFRAMP_UPSTREAM_API_KEY for a URL) and is
never stored or logged; OPENAI_BASE_URL / ANTHROPIC_BASE_URL move a named upstream. Needs the runtime env.
"""

REDACT_HELP = (
    "mask e-mail addresses, phone numbers (9-15 digits) and Luhn-valid card numbers in the STORED text only "
    "(never in what is forwarded). It does NOT catch names, postal addresses, or IDs in free form"
)


def _capture(
    upstream: Annotated[str, Opt(help="openai, anthropic (its OpenAI-compatible API) or http(s)://host:port/v1")],
    store: Annotated[str, Opt(help=STORE_HELP)],
    host: Annotated[str, Opt(help="bind address; loopback unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, Opt(help="port to listen on")] = 8080,
    api_key: Annotated[
        str | None, Opt("--api-key", help="NAME of the env var holding the key clients must send (never the key)")
    ] = None,
    redact: Annotated[bool, Opt(help=REDACT_HELP)] = False,
    shadow: Annotated[
        str | None,
        Opt(help="also ask this local endpoint, http://host:port/v1#MODEL, after answering; its answer is stored"),
    ] = None,
    timeout: Annotated[float, Opt(help="seconds an upstream call may take")] = 600.0,
) -> None:
    from offramp.serve.server import api_key_from_env, port_is_free
    from offramp.traffic.store import open_store

    key = api_key_from_env(api_key)
    if shadow is not None and not shadow.startswith(("http://", "https://")):
        raise OfframpError(f"--shadow {shadow!r}: give the local endpoint as http://host:port/v1#MODEL")
    if not port_is_free(host, port):
        raise OfframpError(f"port {port} on {host} is already in use; pick another with --port")
    open_store(store).close()  # a bad store is one line here, before anything listens
    from offramp.envs import require_env

    require_env("runtime")  # FastAPI, uvicorn and prometheus_client live there
    from offramp.traffic.capture import CaptureProxy

    cfg = _capture_settings(upstream, key, redact, shadow, timeout)
    with open_store(store) as s:
        proxy = CaptureProxy(cfg, s, host=host, port=port)
        auth = f' -H "Authorization: Bearer ${api_key}"' if api_key else ""

        def ready() -> None:
            print(f"capture endpoint: {proxy.url}/v1  (upstream {cfg.upstream.base_url}; store {s.name})")
            print(f"metrics: {proxy.url}/metrics  (offramp_capture_requests_total, _record_failures_total)")
            print(f"try: curl {proxy.url}/v1/models{auth}")
            print("Ctrl-C stops it.", flush=True)

        proxy.run(on_ready=ready)


def _capture_settings(upstream: str, key: str | None, redact: bool, shadow: str | None, timeout: float):
    from offramp.serve.router import Upstream
    from offramp.traffic.capture import SHADOW_KEY_ENV, UPSTREAM_KEY_ENV, CaptureSettings

    up = Upstream.parse(upstream, flag="--upstream", url_key_env=UPSTREAM_KEY_ENV, model=False)
    local = None
    if shadow is not None:
        local = Upstream.parse(shadow, flag="--shadow", url_key_env=SHADOW_KEY_ENV, model=True)
    return CaptureSettings(upstream=up, api_key=key, redact=redact, shadow=local, timeout_s=timeout)


def summary_table(body: dict, max_groups: int = 6) -> Table:
    """One column per (tag, model), one row per figure: readable in an 80-column terminal."""
    from offramp.traffic import report as rep

    rows = rep.summary_rows(body)
    shown = rows[:max_groups] + ([rows[-1]] if body["total"] and len(rows) > max_groups else [])
    title = f"traffic in {body['store']}: {body['calls']:,} calls, {_window(body['window'])}"
    if len(rows) > len(shown):
        title += f" ({len(rows) - len(shown)} more groups in report.html)"
    table = Table(title=title)
    table.add_column("")
    for r in shown:
        table.add_column(f"{r[0]}\n{r[1]}", overflow="fold")
    for i, label in enumerate(rep.SUMMARY_HEADERS[2:], start=2):
        table.add_row(label, *(r[i] for r in shown))
    return table


def _window(w: dict) -> str:
    from offramp.traffic.report import _when, fmt

    if not w["start"]:
        return w["from"]
    return f"{_when(w['start'])} to {_when(w['end'])} ({fmt(w['hours'], 1)} h)"
