"""Statistics for findings: seed spread, intervals, and tests of whether variants differ.

With a handful of seeds the spread is itself uncertain, so intervals use Student's t rather
than the normal approximation. scipy.stats is imported by the functions that use it: it takes
about 1.5 s, which every `normlab` command would otherwise pay at start-up, before any training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from normlab.errors import NormlabError


@dataclass(frozen=True)
class PairTest:
    """A two-sided test of "variant a and variant b are equally accurate".

    `diff` is a minus b in accuracy points; `p` the p-value before any correction for the
    number of pairs compared; `method` names the test so a report can say what was done.
    """

    diff: float
    p: float
    method: str
    detail: str
    discordant: tuple[int, int] | None = None  # McNemar: (right only by a, right only by b)


def wilson_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy measured on `total` images, in percent.

    With one seed the only uncertainty a single run can show is that of the finite test set;
    Wilson's interval stays inside [0, 100] and is accurate near the ceiling, where MNIST lives
    (the normal approximation is not).
    """
    from scipy import stats as sps

    if total < 1:
        return math.nan, math.nan
    ci = sps.binomtest(correct, total).proportion_ci(confidence_level=level, method="wilson")
    return float(100 * ci.low), float(100 * ci.high)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> PairTest:
    """McNemar's exact test for two models scored on the *same* test images.

    Only the images where the two disagree carry information: `b` right only by a, `c` right
    only by b. Under equal accuracy each disagreement is a fair coin, so the p-value is a
    two-sided binomial test of b successes in b + c trials. Pairing removes the variation due to
    which images are hard, so it detects smaller differences than comparing two accuracies.
    """
    from scipy import stats as sps

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise NormlabError(
            f"McNemar needs predictions on the same test images, got {correct_a.shape[0]} and "
            f"{correct_b.shape[0]}; re-run both variants with the same --limit-test"
        )
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    diff = 100.0 * (b - c) / max(len(correct_a), 1)
    return PairTest(diff, p, "McNemar exact", f"{b + c} discordant images", (b, c))


def seeds_test(acc_a: Sequence[float], acc_b: Sequence[float]) -> PairTest:
    """Paired t-test across seeds on final test accuracy.

    Seed k of every variant starts from the same convolution weights and sees the same batch
    order (the seed drives both), so the per-seed differences are the natural pairs. With
    identical differences there is no spread to test against: p is nan, not 0.
    """
    from scipy import stats as sps

    if len(acc_a) != len(acc_b) or len(acc_a) < 2:
        raise NormlabError(
            "a test across seeds needs the same seeds (at least 2) for both variants; "
            "run with --seeds 2 or more"
        )
    d = np.asarray(acc_a, float) - np.asarray(acc_b, float)
    mean = float(d.mean())
    p = math.nan if np.allclose(d, d[0]) else float(sps.ttest_rel(acc_a, acc_b).pvalue)
    return PairTest(mean, p, "paired t-test across seeds", f"{len(d)} seeds")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: comparing every pair of variants makes several tests, and
    without a correction one of them is "significant" by chance far more often than 5%.

    Written out because scipy has no Holm step-down (`scipy.stats.false_discovery_control` is
    Benjamini-Hochberg/Yekutieli, which controls a different error rate); nan p-values (tests
    with no spread) stay nan and do not count as tests made."""
    order = sorted(range(len(pvalues)), key=lambda i: (math.isnan(pvalues[i]), pvalues[i]))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    m = sum(not math.isnan(p) for p in pvalues)  # an undefined test is not a test made
    for rank, i in enumerate(order):
        if math.isnan(pvalues[i]):
            continue
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
