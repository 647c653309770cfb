"""Intervals every stage reports the same way (scipy's, not hand-written)."""

from __future__ import annotations


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (scipy's); (0, 0) for no trials."""
    if n == 0:
        return (0.0, 0.0)
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))
