"""Monthly cost vs monthly volume, API against self-hosted, the crossing marked (PNG via matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offramp.cost.model import Capacity, api_cost, self_hosted_cost
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload


def volume_range(*volumes: float | None) -> np.ndarray:
    """Log-spaced volumes spanning the workload's volume and the crossing, with a decade or more either side."""
    known = [v for v in volumes if v]
    lo, hi = (min(known) / 30, max(known) * 30) if known else (1e3, 1e9)
    return np.logspace(np.log10(max(lo, 1.0)), np.log10(max(hi, 10.0)), 400)


def cost_curves(
    w: Workload,
    price: ApiPrice,
    cap: Capacity | None,
    per_hour: float,
    volumes: np.ndarray,
    escalation_share: float | None = None,
    **kw,
) -> dict[str, list[float]]:
    api = [api_cost(w.with_volume(v), price).monthly_usd for v in volumes]
    curves = {"api": api}
    if cap is not None:
        curves["self_hosted"] = [self_hosted_cost(w.with_volume(v), cap, per_hour, **kw).monthly_usd for v in volumes]
        if escalation_share is not None:  # the local model sees every request, the escalated share costs API too
            curves["cascade"] = [s + escalation_share * a for s, a in zip(curves["self_hosted"], api, strict=True)]
    return curves


NO_LOAD_MET_SLO = "self-hosted not drawn: no load level of the bench met the latency SLO"


def breakeven_figure(
    volumes: np.ndarray,
    curves: dict[str, list[float]],
    *,
    api_label: str,
    host_label: str,
    crossing: float | None,
    workload_volume: float,
):
    """The figure (a matplotlib Figure, not yet saved): the legend sits below the axes, so it hides no curve
    and no note; the 'no load met the SLO' note is drawn only when there is no self-hosted curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # drawn off-screen, no pyplot state
    ax = fig.add_subplot()
    ax.plot(volumes, curves["api"], label=f"API: {api_label}", color="tab:red")
    if "self_hosted" in curves:
        ax.plot(volumes, curves["self_hosted"], label=f"self-hosted: {host_label}", color="tab:blue")
    else:
        box = {"facecolor": "white", "edgecolor": "tab:blue", "alpha": 0.9}
        ax.text(0.5, 0.5, NO_LOAD_MET_SLO, transform=ax.transAxes, ha="center", va="center", color="tab:blue", bbox=box)
    if "cascade" in curves:
        ax.plot(volumes, curves["cascade"], label="cascade: self-hosted + escalated to the API", color="tab:purple")
    if crossing:
        api_at = float(np.interp(crossing, volumes, curves["api"]))
        ax.axvline(crossing, color="gray", linestyle="--", linewidth=1)
        ax.plot([crossing], [api_at], "ko")
        ax.annotate(
            f"break-even\n{crossing:,.0f} req/month", (crossing, api_at), xytext=(8, -30), textcoords="offset points"
        )
    if workload_volume > 0:
        ax.axvline(workload_volume, color="tab:green", linestyle=":", label=f"this workload: {workload_volume:,.0f}")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("requests per month")
    ax.set_ylabel("USD per month")
    ax.set_title("Monthly cost: API vs self-hosted")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return fig


def plot_breakeven(path: Path, volumes: np.ndarray, curves: dict[str, list[float]], **labels) -> None:
    """`breakeven_figure(volumes, curves, **labels)` saved as a PNG at `path`."""
    breakeven_figure(volumes, curves, **labels).savefig(path, format="png")
