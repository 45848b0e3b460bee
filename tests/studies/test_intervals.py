"""The 95% interval over seeds (Student's t, its quantile computed without scipy) and paired differences, on cases
with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cvstream.studies.intervals import mean_interval, paired_difference, paired_differences, summarize_seeds, t_cdf, t_quantile

# t(0.975, 2) in closed form: with 2 degrees of freedom P(|T| <= t) = t / sqrt(t^2 + 2), so t^2 = 2 x 0.95^2 / (1 - 0.95^2)
T2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045), (120, 1.980)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert round(t_quantile(0.975, df), 3) == table


def test_t_cdf_against_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 2.0, 40.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-15)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-15)
        assert t_cdf(t, 7) + t_cdf(-t, 7) == pytest.approx(1.0, abs=1e-15)  # symmetric
    assert t_cdf(1.96, 100_000) == pytest.approx(0.975, abs=1e-4)  # towards the normal
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)
    assert t_quantile(0.975, 2) == pytest.approx(T2, rel=1e-14)
    with pytest.raises(ValueError):
        t_cdf(1.0, 0)


def test_interval_of_one_two_three():
    found = mean_interval([1, 2, 3])  # sd 1, n 3: half-width t(0.975, 2) / sqrt(3)
    half = T2 / math.sqrt(3)
    assert found.mean == 2 and found.n == 3
    assert found.low == pytest.approx(2 - half, abs=1e-12) and found.high == pytest.approx(2 + half, abs=1e-12)
    assert found.half_width == pytest.approx(half, abs=1e-12)
    assert not found.resolved  # [-0.484, 4.484] holds 0


def test_one_value_has_no_interval_and_nan_values_are_left_out():
    single = mean_interval([0.4])
    assert single.mean == 0.4 and math.isnan(single.low) and math.isnan(single.high) and not single.resolved
    assert mean_interval([1, float("nan"), 3]) == mean_interval([1, 3])
    assert mean_interval([]).n == 0 and math.isnan(mean_interval([]).mean)


def test_paired_difference_takes_the_interval_of_the_differences():
    reference = [0.50, 0.60, 0.70]
    variant = [0.52, 0.625, 0.715]  # differences 0.02, 0.025, 0.015: mean 0.02, sd 0.005
    found = paired_difference(variant, reference)
    half = T2 * 0.005 / math.sqrt(3)
    assert found.mean == pytest.approx(0.02) and found.half_width == pytest.approx(half)
    assert found.low == pytest.approx(0.02 - half) and found.low > 0 and found.resolved
    # the seeds' spread cancels in the pairing: the two means' own intervals overlap widely
    assert mean_interval(variant).low < mean_interval(reference).high
    assert not paired_difference([0.5, 0.7, 0.6], [0.6, 0.6, 0.6]).resolved  # -0.1, 0.1, 0: holds 0
    assert paired_difference([1.0, 1.0], [0.5, 0.5]).resolved  # a constant difference: the interval is that point
    assert not paired_difference([0.5, 0.5], [0.5, 0.5]).resolved
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_frames_of_runs_become_means_intervals_and_paired_differences():
    runs = pd.DataFrame({
        "budget": [2] * 6 + [8] * 6,
        "seed": [1, 1, 2, 2, 3, 3] * 2,
        "variant": ["a", "b"] * 6,
        "area": [0.50, 0.52, 0.60, 0.625, 0.70, 0.715, 0.5, 0.5, 0.6, 0.7, 0.7, 0.6],
    })
    summary = summarize_seeds(runs, keys=["budget", "variant"], figures=["area"])
    assert list(zip(summary.budget, summary.variant)) == [(2, "a"), (2, "b"), (8, "a"), (8, "b")]
    assert (summary.seeds == 3).all()
    expected = mean_interval([0.52, 0.625, 0.715])
    assert (summary.area[1], summary.area_low[1], summary.area_high[1]) == (expected.mean, expected.low, expected.high)
    paired = paired_differences(runs, reference="a", figures=["area"], within=["budget"]).set_index(["budget", "variant"])
    assert pd.isna(paired.loc[(2, "a"), "diff_area_resolved"]) and np.isnan(paired.loc[(2, "a"), "diff_area"])
    assert paired.loc[(2, "b"), "diff_area"] == pytest.approx(0.02) and bool(paired.loc[(2, "b"), "diff_area_resolved"])
    assert paired.loc[(8, "b"), "diff_area"] == pytest.approx(0.0) and not bool(paired.loc[(8, "b"), "diff_area_resolved"])
    assert (paired.reference == "a").all()
    shuffled = runs.sample(frac=1.0, random_state=0)  # paired by seed, not by row order
    again = paired_differences(shuffled, reference="a", figures=["area"], within=["budget"]).set_index(["budget", "variant"])
    assert again.loc[(2, "b"), "diff_area_high"] == pytest.approx(paired.loc[(2, "b"), "diff_area_high"])
