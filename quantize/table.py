"""The comparison table of several quantize reports (rich)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from offramp.artifacts import QuantizeReport, load_report
from offramp.quantize.run import REPORT


def load_reports(paths: list[Path]) -> list[QuantizeReport]:
    return [load_report(p / REPORT if Path(p).is_dir() else Path(p), "quantize") for p in paths]


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.1f}" if n else "-"


def _quality(r: QuantizeReport) -> str:
    if r.head == "classify":
        return (
            f"accuracy {100 * r.base_accuracy:.1f} -> {100 * r.accuracy:.1f} % ({100 * r.label_agreement:.0f} % agree)"
        )
    return f"perplexity {r.base_perplexity:.2f} -> {r.perplexity:.2f} ({r.perplexity_change_pct:+.1f} %)"


def comparison_table(paths: list[Path]) -> Table:
    reports = load_reports(paths)
    hw = {r.hardware.get("cpu") or "?" for r in reports}
    table = Table(title=f"quantized checkpoints (measured on {', '.join(sorted(hw))})")
    for col, just in [
        ("method", "left"),
        ("model", "left"),
        ("linear layers MB (x smaller)", "right"),
        ("checkpoint MB (vs orig)", "right"),
        ("quality orig -> quantized", "right"),
        ("quantize s", "right"),
        ("vLLM-CPU", "left"),
    ]:
        table.add_column(col, justify=just, no_wrap=col == "method")
    for r in reports:
        table.add_row(
            r.method,
            Path(r.base_model).name,
            f"{_mb(r.linear_bytes)} ({r.linear_compression:.2f}x)",
            f"{_mb(r.size_bytes)} ({r.size_ratio:.2f}x)",
            _quality(r),
            f"{r.quantize_time_s:.0f}",
            "yes" if r.servable_by_vllm_cpu else "no",
        )
    return table
