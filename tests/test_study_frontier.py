"""Claim 3 at matched in-domain score: the frontier's corners and interpolation, the matched comparison
and its bootstrap, and the verdict, against hand computations on small explicit numbers."""

from __future__ import annotations

import dataclasses

import pytest

from psft_lightning.study.budgets import BUDGETS
from psft_lightning.study.frontier import at, envelope, frontier_points, grid, matched, overlap, score
from psft_lightning.study.rates import SECONDS_PER_DRIFT_ROW, SECONDS_PER_MC_ITEM
from psft_lightning.study.verdicts import between, forgetting


def test_the_envelope_keeps_the_points_no_other_beats_and_interpolates_between_them():
    points = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.7), (0.5, 0.2), (0.3, 0.4), (0.05, 0.6)]
    # (0.2, 0.5) and (0.05, 0.6) are beaten by (0.3, 0.7) and (0.1, 0.9); of x = 0.3 the better is kept
    corners = envelope(points)
    assert corners == [(0.1, 0.9), (0.3, 0.7), (0.5, 0.2)]
    assert at(corners, 0.05) == 0.9  # left of the first corner: the best retention at >= x
    assert at(corners, 0.2) == pytest.approx(0.9 + (0.7 - 0.9) * 0.1 / 0.2)  # 0.8
    assert at(corners, 0.4) == pytest.approx(0.7 + (0.2 - 0.7) * 0.5)  # 0.45
    assert at(corners, 0.5) == 0.2 and at(corners, 0.51) is None  # no checkpoint scored that high
    assert grid(0.2, 0.4, 3) == [0.2, pytest.approx(0.3), 0.4] and grid(0.3, 0.3) == [0.3]
    assert overlap([0.1, 0.2], [0.15, 0.5]) == (0.15, 0.2) and overlap([0.1, 0.2], [0.3]) is None


def test_drift_is_token_weighted_and_resampled_per_item():
    items = [[2.0, 1], [9.0, 3]]  # (NLL sum, tokens) per base answer
    assert score("ood/drift_nll", items) == pytest.approx(11 / 4)
    assert score("ood/drift_nll", items, [1, 1]) == pytest.approx(3.0)
    assert score("ood/mc_acc", [1.0, 0.0, 1.0], [0, 1, 1]) == pytest.approx(1 / 3)


def run(seed: int, points: list[tuple[float, float]], shift: float = 0.1) -> dict:
    """A run whose checkpoints have in-domain score x and drift NLL y, over two answers of one token each
    at y - shift and y + shift: a resample moves every checkpoint alike."""
    return {
        "seed": seed,
        "points": [{"x": x, "items": {"ood/drift_nll": [[y - shift, 1], [y + shift, 1]]}} for x, y in points],
    }


SFT = [run(0, [(0.2, 1.0), (0.4, 1.4)])]
PSFT = [run(0, [(0.1, 0.8), (0.3, 1.0), (0.5, 1.6)])]


def test_retention_is_compared_at_matched_in_domain_score_as_by_hand():
    # overlap [0.2, 0.4]; SFT's drift there is 1.0 + 2 (x - 0.2); PSFT's is 0.8 + (x - 0.1) up to x = 0.3,
    # then 1.0 + 3 (x - 0.3): the difference is 0.1 - x, then x - 0.5; over the 11 grid points
    # 0.2, 0.22, ..., 0.4 it sums to (-0.1 - 0.12 - ... - 0.2) + (-0.18 - ... - 0.1) = -0.9 - 0.7 = -1.6
    result = matched(SFT, PSFT, "ood/drift_nll", samples=200)
    assert result.ranges == {0: (0.2, 0.4)} and result.items == 2
    assert result.diff == pytest.approx(-1.6 / 11)
    # every resample of the two answers moves every checkpoint by the same amount: the paired difference
    # does not move, so the interval is the point
    assert result.low == pytest.approx(result.diff) and result.high == pytest.approx(result.diff)
    assert result.verdict() == "yes"  # lower drift NLL for PSFT at every matched score
    assert matched(PSFT, SFT, "ood/drift_nll", samples=200).verdict() == "no"


def test_seeds_are_averaged_and_resampled():
    later = ([run(1, [(0.3, 1.2)])], [run(1, [(0.3, 1.0)])])  # seed 1 meets at x = 0.3 only: -0.2
    result = matched(SFT + later[0], PSFT + later[1], "ood/drift_nll", samples=400)
    assert result.ranges == {0: (0.2, 0.4), 1: (0.3, 0.3)}
    assert result.diff == pytest.approx((-1.6 / 11 - 0.2) / 2)
    # resampling the seeds: both seed 0 ({0, 0}) and both seed 1 ({1, 1}) are the extremes
    assert result.low == pytest.approx(-0.2) and result.high == pytest.approx(-1.6 / 11)


def test_an_interval_across_zero_or_no_common_score_cannot_decide():
    # one MC item each way: resampling gives PSFT -1 (both the first), +1 (both the second) or 0
    sft = [{"seed": 0, "points": [{"x": 0.3, "items": {"ood/mc_acc": [1.0, 0.0]}}]}]
    psft = [{"seed": 0, "points": [{"x": 0.3, "items": {"ood/mc_acc": [0.0, 1.0]}}]}]
    tied = matched(sft, psft, "ood/mc_acc", samples=400)
    assert (tied.diff, tied.low, tied.high) == (0.0, -1.0, 1.0) and tied.verdict() == "cannot decide"
    apart = [run(0, [(0.6, 1.0), (0.7, 1.1)])]  # PSFT's checkpoints all learned more than SFT's
    assert matched(SFT, apart, "ood/drift_nll") is None
    with pytest.raises(ValueError, match="different numbers of items"):
        matched(SFT, [run(0, [(0.3, 1.0)]) | {"points": [{"x": 0.3, "items": {"ood/drift_nll": [[1, 1]]}}]}],
                "ood/drift_nll")  # fmt: skip


def chosen(drift: tuple[float, float]) -> dict:
    metrics = {"ood/mc_acc": 0.5, "ood/if_strict": 0.25}
    return {
        name: [{"metrics": {**metrics, "ood/drift_nll": d}}]
        for name, d in zip(("ce", "psft"), drift, strict=True)
    }


def test_claim_3_is_decided_at_matched_score_not_at_the_selected_checkpoints():
    # at the selected checkpoints PSFT drifts more (the paper's protocol says no); at matched score less
    picked = chosen((1.0, 1.5))
    claim, verdict, detail = forgetting(picked, {"ood/drift_nll": matched(SFT, PSFT, "ood/drift_nll")})
    assert claim.startswith("(3)") and verdict == "yes"
    assert "-0.145 [-0.145, -0.145] over [0.200, 0.400] (seed 0)" in detail
    assert "the paper's protocol, not decided on): drift NLL per seed, SFT vs PSFT 1.000 vs 1.500" in detail
    assert forgetting(picked, {"ood/drift_nll": matched(PSFT, SFT, "ood/drift_nll")})[1] == "no"
    verdict, detail = forgetting(picked, {"ood/drift_nll": None})[1:]
    assert verdict == "cannot decide" and "no matched range" in detail
    assert forgetting(picked, {})[1] == "cannot decide"


def test_frontier_points_are_the_epoch_checkpoints_with_ood_items():
    checkpoints = [
        {"epoch": 1, "step": 8, "dev_accuracy": 0.25},
        {"epoch": 2, "step": 16, "dev_accuracy": 0.5},
    ]
    epochs = [{"step": 8, "items": {"ood/mc_acc": [1.0]}}, {"step": 16, "items": {}}]
    assert frontier_points(checkpoints, epochs) == [
        {"epoch": 1, "step": 8, "x": 0.25, "items": {"ood/mc_acc": [1.0]}}
    ]


def test_the_frontier_cost_is_in_the_estimate():
    standard = BUDGETS["standard"]
    runs = 2 * (2 + 1)  # SFT and PSFT: two lrs at seed 0, the selected one at seed 1
    assert standard.frontier_runs() == runs
    per_epoch = 64 * SECONDS_PER_DRIFT_ROW + standard.eval["num_mc"] * SECONDS_PER_MC_ITEM
    without = dataclasses.replace(standard, frontier_ood=())
    assert standard.estimate() - without.estimate() == pytest.approx(runs * (standard.epochs - 1) * per_epoch)


def test_claim_4_compares_only_the_in_between_objectives_the_study_ran():
    def chosen_run(entropy: float, drift: float) -> dict:
        return {"seed": 0, "metrics": {"eval/entropy": entropy, "ood/drift_nll": drift}}

    chosen = {"ce": [chosen_run(0.1, 1.2)], "psft": [chosen_run(0.5, 1.0)]}
    assert between(chosen)[1:] == (
        "cannot decide",
        "neither SFT-KL nor PSFT (warm-up) was among this study's objectives",
    )
    chosen["kl"] = [chosen_run(0.3, 1.1)]  # inside [0.1, 0.5] and [1.0, 1.2]
    claim, verdict, evidence = between(chosen)
    assert verdict == "yes" and evidence.count(" in [SFT, PSFT]") == 2 and "warm-up" not in evidence
    chosen["psft_warmup"] = [chosen_run(0.6, 1.1)]  # entropy above PSFT's
    assert between(chosen)[1] == "no"
