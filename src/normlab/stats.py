"""Statistics for findings: seed spread and intervals (more tests live beside them).

With a handful of seeds the spread is itself uncertain, so intervals use Student's t rather
than the normal approximation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats as sps


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a two-sided Student-t confidence interval (lo, hi) for the mean.

    One value has no spread: its interval is (nan, nan), so callers cannot mistake a single
    run for a precise one.
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = sps.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)
