"""The break-even plot says 'no load met the SLO' only when there is no self-hosted curve, and its legend hides
neither a curve nor that note."""

import numpy as np
import pytest

from offramp.cost.plot import NO_LOAD_MET_SLO, breakeven_figure, plot_breakeven

VOLUMES = np.logspace(3, 8, 50)
API = list(VOLUMES * 1e-5)
HOST = [260.0] * len(VOLUMES)
LABELS = {"api_label": "gpt-4o-mini (realtime)", "host_label": "aws-c7i-xlarge", "workload_volume": 1e6}


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def _legend_clear_of_axes(fig) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    return not legend.get_window_extent(renderer).overlaps(fig.axes[0].get_window_extent(renderer))


@pytest.mark.parametrize("cascade", [False, True])
def test_a_self_hosted_curve_has_no_slo_note(cascade):
    curves = {"api": API, "self_hosted": HOST}
    if cascade:
        curves["cascade"] = [h + 0.25 * a for h, a in zip(HOST, API, strict=True)]
    fig = breakeven_figure(VOLUMES, curves, crossing=None, **LABELS)
    assert not [t for t in _texts(fig) if "SLO" in t]
    labels = fig.legends[0].get_texts()
    assert any("self-hosted: aws-c7i-xlarge" in t.get_text() for t in labels)
    assert _legend_clear_of_axes(fig)


def test_without_a_self_hosted_curve_the_note_shows_clear_of_the_legend(tmp_path):
    fig = breakeven_figure(VOLUMES, {"api": API}, crossing=None, **LABELS)
    assert NO_LOAD_MET_SLO in _texts(fig)
    assert _legend_clear_of_axes(fig)  # the note is inside the axes, so the legend cannot cover it


def test_plot_breakeven_writes_a_png(tmp_path):
    png = tmp_path / "breakeven.png"
    plot_breakeven(png, VOLUMES, {"api": API, "self_hosted": HOST}, crossing=2.6e7, **LABELS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
