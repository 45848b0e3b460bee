"""Means over seeds with their 95% intervals, and paired differences that say whether they are resolved.

The interval is Student's t interval for the mean of n independent per-seed values:
mean ± t_{0.975, n-1} · sd / sqrt(n), sd with ddof = 1. A paired difference (variant minus
reference, the same seed on both sides) gets the same interval on the per-seed differences;
it is *resolved* when its interval excludes 0. With one value there is no interval (NaN
bounds, never resolved). Values that are NaN (a figure a seed did not define) are left out.

The t quantile is computed here, without scipy: the exact CDF of Student's t for an integer
number of degrees of freedom (Abramowitz & Stegun 26.7.3 for odd, 26.7.4 for even), inverted
by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` (a whole number >= 1) degrees of freedom, exactly (A&S 26.7.3 and 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a whole number >= 1, not {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: A = (2/pi) [theta + sin cos (1 + 2/3 cos^2 + 2·4/(3·5) cos^4 + ... up to cos^(df-3))]
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        within = 2 / math.pi * (theta + sin * math.cos(theta) * total)
    else:  # even: A = sin [1 + 1/2 cos^2 + 1·3/(2·4) cos^4 + ... up to cos^(df-2)]
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        within = sin * total
    within = min(max(within, 0.0), 1.0)  # P(|T| <= |t|)
    return 0.5 + within / 2 if t >= 0 else 0.5 - within / 2


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on `t_cdf` to double precision."""
    if not 0 < p < 1:
        raise ValueError(f"a probability in (0, 1), not {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over n seeds and its 95% t interval [low, high] (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return self.high - self.mean

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (a difference that the seeds settle)."""
        return bool(self.low > 0 or self.high < 0)


NOTHING = Interval(float("nan"), float("nan"), float("nan"), 0)  # no value to average


def mean_interval(values: Iterable[float], *, confidence: float = CONFIDENCE) -> Interval:
    """The mean of the values and its Student t interval; NaN values are left out."""
    x = np.asarray([float(v) for v in values], dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return NOTHING
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(variant: Sequence[float], reference: Sequence[float], *, confidence: float = CONFIDENCE) -> Interval:
    """The interval of variant minus reference over the seeds they share (position i is the same seed on both sides);
    a seed where either side is NaN is left out."""
    if len(variant) != len(reference):
        raise ValueError(f"paired values of unequal length ({len(variant)} and {len(reference)})")
    return mean_interval(np.asarray(variant, dtype=float) - np.asarray(reference, dtype=float), confidence=confidence)


# -- over a table of runs, one row per (variant, seed) -------------------------------------------------


def summarize_seeds(runs: pd.DataFrame, *, keys: list[str], figures: list[str], keep: list[str] = ()) -> pd.DataFrame:
    """One row per group of `keys` (in order of appearance): the `keep` columns as the group's first row has them, each
    figure's mean with its interval as `<figure>`, `<figure>_low`, `<figure>_high`, and `seeds`, the runs averaged."""
    rows = []
    for _, group in runs.groupby(keys, sort=False, dropna=False):
        row = {column: group[column].iloc[0] for column in [*keys, *keep]}
        for figure in figures:
            found = mean_interval(group[figure]) if figure in group else NOTHING
            row.update({figure: found.mean, f"{figure}_low": found.low, f"{figure}_high": found.high})
        row["seeds"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(
    runs: pd.DataFrame, *, reference: str, figures: list[str], within: list[str] = (), variant: str = "variant", seed: str = "seed",
) -> pd.DataFrame:
    """Per variant (and group of `within`, a budget say): each figure's difference against the `reference` variant of
    the same group, seed by seed, as `diff_<figure>`, `_low`, `_high` and `_resolved` (None for the reference itself)."""
    rows = []
    groups = runs.groupby(list(within), sort=False, dropna=False) if within else [((), runs)]
    for _, group in groups:
        base = group.loc[group[variant] == reference, [seed, *figures]]
        for name, rows_of in group.groupby(variant, sort=False):
            row = {column: rows_of[column].iloc[0] for column in within} | {variant: name, "reference": reference}
            paired = rows_of[[seed, *figures]].merge(base, on=seed, suffixes=("", "__reference"), validate="one_to_one")
            for figure in figures:
                if name == reference:
                    found, resolved = NOTHING, None
                else:
                    found = paired_difference(paired[figure].to_numpy(float), paired[f"{figure}__reference"].to_numpy(float))
                    resolved = found.resolved
                row.update({f"diff_{figure}": found.mean, f"diff_{figure}_low": found.low, f"diff_{figure}_high": found.high,
                            f"diff_{figure}_resolved": resolved})
            rows.append(row)
    frame = pd.DataFrame(rows)
    for figure in figures:
        frame[f"diff_{figure}_resolved"] = frame[f"diff_{figure}_resolved"].astype("boolean")
    return frame
