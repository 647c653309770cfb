"""The JSON report every stage writes beside its artifact, and the provenance of each number in it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from offramp import __version__
from offramp.hardware import hardware_info
from offramp.paths import write_json


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def measured(value: Any, unit: str = "", **extra: Any) -> dict[str, Any]:
    """A number measured on this machine: carries the hardware it was measured on."""
    return {"value": value, "unit": unit, "source": "measured", "hardware": hardware_info(), **extra}


def list_price(value: float, unit: str, date: str, source: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "source": "list_price", "date": date, "reference": source}


def write_report(path: Path, stage: str, body: dict[str, Any]) -> dict[str, Any]:
    """Write a stage's report; one another stage reads is first checked against its schema in offramp.artifacts,
    so a producer that drifts from the contract fails here, not in the stage that reads it."""
    from offramp.artifacts import REPORTS

    report = {
        "stage": stage,
        "offramp_version": __version__,
        "created_at": now_iso(),
        "hardware": hardware_info(),
        **body,
    }
    if stage in REPORTS:
        REPORTS[stage].model_validate(report)
    write_json(path, report)
    return report
