"""Intervals of a mean, shared by the sweep's paired differences and the pretraining's held-out gain."""
from __future__ import annotations

import statistics
from typing import Sequence

__all__ = ["t_interval"]


def t_interval(values: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean of `values` (nan for fewer than 2)."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return float("nan")
    return float(t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / n ** 0.5
