"""The study's paired statistics against hand computations."""

from __future__ import annotations

import pytest

from psft_lightning.study.stats import mcnemar_exact, paired_bootstrap, pass_change, window_change


def test_mcnemar_exact_counts_discordant_questions_and_doubles_the_binomial_tail():
    a = [True] * 6 + [False] * 2 + [True] * 10 + [False] * 4
    b = [False] * 6 + [True] * 2 + [True] * 10 + [False] * 4
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (6, 2)
    # P(X <= 2) for X ~ Bin(8, 1/2) = (1 + 8 + 28) / 256; two-sided: twice that
    assert p == pytest.approx(2 * 37 / 256)
    assert mcnemar_exact([True, False], [True, False])[2] == 1.0
    with pytest.raises(ValueError, match="same questions"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_interval_brackets_the_mean_difference_and_is_seeded():
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 30 + [0.0] * 20 + [1.0] * 50
    result = paired_bootstrap(a, b, samples=1000, seed=3)
    assert result.diff == pytest.approx(0.3) and result.n == 100
    # the SE of a mean of 30 ones among 100 is sqrt(0.3 * 0.7 / 100) = 0.046: the interval is about +-0.09
    assert 0.19 < result.low < 0.23 and 0.37 < result.high < 0.41 and result.decided()
    assert paired_bootstrap(a, b, samples=1000, seed=3) == result
    tie = paired_bootstrap([0.0, 1.0] * 20, [1.0, 0.0] * 20, samples=500)
    assert tie.diff == 0.0 and tie.low < 0 < tie.high and not tie.decided()


def test_window_change_is_the_last_window_minus_the_first_with_a_resampled_interval():
    # each window resampled alone: [0, 1] gives means 0, 1/2, 1 (1/4, 1/2, 1/4) and [1, 1] gives 1, so the
    # change is 1, 1/2 or 0, and the 2.5/97.5 percentiles of 2,000 draws are 0 and 1
    change = window_change([0.0, 1.0, 1.0, 0.0, 1.0, 1.0], 2)
    assert (change.diff, change.low, change.high, change.n) == (0.5, 0.0, 1.0, 2)
    flat = window_change([0.25, 0.25, 0.75, 0.75], 2)  # no spread inside a window: the interval is a point
    assert (flat.diff, flat.low, flat.high) == (0.5, 0.5, 0.5) and flat.decided()
    with pytest.raises(ValueError, match="a window of 3 needs 6 values or more, got 5"):
        window_change([0.0] * 5, 3)


def test_pass_change_pairs_each_prompt_last_pass_with_its_first():
    rows = [
        {"prompt": 0, "pass": 1, "rewards": [0.0, 1.0]},  # 0.5 -> 1.0
        {"prompt": 0, "pass": 2, "rewards": [1.0, 1.0]},
        {"prompt": 1, "pass": 1, "rewards": [0.0, 0.0]},  # 0.0 -> 0.5 (pass 3 is its last)
        {"prompt": 1, "pass": 2, "rewards": [1.0, 1.0]},
        {"prompt": 1, "pass": 3, "rewards": [1.0, 0.0]},
        {"prompt": 2, "pass": 1, "rewards": [1.0, 1.0]},  # seen once: not paired
    ]
    change = pass_change(rows)
    assert change.n == 2 and change.diff == pytest.approx(0.5)
    assert change.low == pytest.approx(0.5) and change.high == pytest.approx(0.5)  # both prompts +0.5
    assert pass_change(rows[-1:]) is None and pass_change([]) is None
