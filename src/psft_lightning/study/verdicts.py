"""The paper's claims as computed verdicts: each with the numbers and interval it was decided on, and
"cannot decide" where the interval or the seeds do not settle it."""

from __future__ import annotations

import statistics

from psft_lightning.study.budgets import LABELS
from psft_lightning.study.frontier import UNDECIDED, X_KEY, Matched, compare
from psft_lightning.study.stats import Paired, mcnemar_exact, paired_bootstrap

FLOOR = 0.25  # below this test accuracy for both SFT and PSFT, "matches" only means "both fail alike"
MARGIN = 0.05  # parity in domain: PSFT within 5 points of SFT's test accuracy (non-inferiority)
METRICS = {
    "eval/entropy": "entropy",
    "ood/mc_acc": "MC acc",
    "ood/drift_nll": "drift NLL ↓",
    "ood/if_strict": "IF strict",
}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def per_seed(runs: list[dict], key: str) -> list[float]:
    """One value per seed of a method: test scores are means over questions, others logged metrics."""
    if key in ("test_greedy", "test_avg_k"):
        return [mean(r[key]) for r in runs]
    return [r["metrics"][key] for r in runs]


def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation over seeds (the mean alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def common(chosen: dict[str, list[dict]], name: str, key: str, reference: str) -> tuple[list, list]:
    """Both objectives' first-seed scores on the test questions both were scored on (a peer may be
    scored on the first N of the same seeded sample only: the same questions, in the same order)."""
    ref, other = chosen[reference][0][key], chosen[name][0][key]
    n = min(len(ref), len(other))
    return ref[:n], other[:n]


def paired(chosen: dict[str, list[dict]], name: str, key: str, reference: str = "ce") -> Paired:
    """``name`` minus ``reference`` per test question, at the first seed."""
    return paired_bootstrap(*common(chosen, name, key, reference))


def mcnemar(chosen: dict[str, list[dict]], name: str, reference: str = "ce") -> tuple[int, int, float]:
    ref, other = common(chosen, name, "test_greedy", reference)
    return mcnemar_exact([s == 1.0 for s in ref], [s == 1.0 for s in other])


def consistent(pairs: list[tuple[float, float]], holds) -> str:
    """'yes' when every seed shows the claim, 'no' when none does, else cannot decide."""
    shown = [holds(a, b) for a, b in pairs]
    return "yes" if all(shown) else "no" if not any(shown) else UNDECIDED


def verdicts(record: dict, compared: dict[str, Matched | None] | None = None) -> list[tuple[str, str, str]]:
    """Each claim, whether this run shows it, and the numbers it was decided on (``compared``: the
    frontier comparison, ``frontier.compare(record)``, when the caller has it already)."""
    chosen, base = record["chosen"], record["base"]
    ce_h, psft_h = per_seed(chosen["ce"], "eval/entropy"), per_seed(chosen["psft"], "eval/entropy")
    base_h = base["metrics"]["eval/entropy"]
    entropy = list(zip(ce_h, psft_h, strict=False))
    claims = [
        (
            "(1) SFT's token entropy collapses while PSFT's stays up",
            consistent(entropy, lambda ce, psft: ce < psft and ce < base_h),
            f"probe entropy per seed, SFT vs PSFT: {', '.join(f'{a:.3f} vs {b:.3f}' for a, b in entropy)}; "
            f"base {base_h:.3f} (shown if every seed has SFT < PSFT and SFT < base)",
        )
    ]
    gap = paired(chosen, "psft", "test_greedy")
    only_ce, only_psft, p = mcnemar(chosen, "psft")
    floor = max(mean(chosen[n][0]["test_greedy"]) for n in ("ce", "psft")) < FLOOR
    parity = UNDECIDED if floor else "yes" if gap.low > -MARGIN else "no" if gap.high < -MARGIN else UNDECIDED
    claims.append(
        (
            "(2) PSFT matches SFT in domain",
            parity,
            f"test greedy accuracy PSFT - SFT {gap} (95% paired bootstrap, {gap.n} questions); McNemar: "
            f"{only_ce} right only for SFT, {only_psft} only for PSFT, p = {p:.3f}; shown if the interval "
            f"lies above -{MARGIN:.2f}, not if it lies below; cannot decide while both stay under "
            f"{FLOOR:.2f}",
        )
    )
    claims.append(forgetting(chosen, compared if compared is not None else compare(record)))
    claims.append(between(chosen))
    if {"ce", "psft"} <= set(record.get("rl") or {}):
        claims.append(rl_claim(record["rl"]))
    return claims


def between(chosen: dict[str, list[dict]]) -> tuple[str, str, str]:
    """(4), on the entropy and drift of each in-between objective the study ran."""
    claim = "(4) SFT-KL and PSFT (warm-up) sit between SFT and PSFT"
    names = [name for name in ("kl", "psft_warmup") if name in chosen]
    if not names:
        return claim, UNDECIDED, "neither SFT-KL nor PSFT (warm-up) was among this study's objectives"
    found = []
    for name in names:
        for key in ("eval/entropy", "ood/drift_nll"):
            lo, hi = sorted(statistics.fmean(per_seed(chosen[n], key)) for n in ("ce", "psft"))
            value = statistics.fmean(per_seed(chosen[name], key))
            found.append((name, key, lo <= value <= hi, value))
    return (
        claim,
        "yes" if all(ok for *_, ok, _ in found) else "no",
        "; ".join(
            f"{LABELS[n]} {METRICS[k]} {v:.3f} {'in' if ok else 'outside'} [SFT, PSFT]"
            for n, k, ok, v in found
        ),
    )


def forgetting(chosen: dict[str, list[dict]], compared: dict[str, Matched | None]) -> tuple[str, str, str]:
    """(3), decided at matched in-domain score on the first OOD metric measured at every epoch (drift
    when measured); the selected checkpoints' numbers (the paper's protocol) are reported beside it."""
    drift = list(
        zip(per_seed(chosen["ce"], "ood/drift_nll"), per_seed(chosen["psft"], "ood/drift_nll"), strict=False)
    )
    mc = [spread(per_seed(chosen[n], "ood/mc_acc")) for n in ("ce", "psft")]
    ifs = [spread(per_seed(chosen[n], "ood/if_strict")) for n in ("ce", "psft")]
    protocol = (
        f"at the selected checkpoints (the paper's protocol, not decided on): drift NLL per seed, SFT vs "
        f"PSFT {', '.join(f'{a:.3f} vs {b:.3f}' for a, b in drift)}; MC acc SFT {mc[0]} vs PSFT {mc[1]}; "
        f"IF strict SFT {ifs[0]} vs PSFT {ifs[1]}"
    )
    claim = "(3) PSFT forgets less out of domain (at matched in-domain score)"
    if not compared:
        return claim, UNDECIDED, f"no OOD set measured at every epoch checkpoint (no frontier); {protocol}"
    metric, decisive = next(iter(compared.items()))
    if decisive is None:
        return (
            claim,
            UNDECIDED,
            f"SFT's and PSFT's checkpoints share no in-domain score: no matched range; {protocol}",
        )
    matched = "; ".join(
        f"{METRICS[m]} {r} over {ranges(r)}" if r is not None else f"{METRICS[m]}: no overlap"
        for m, r in compared.items()
    )
    better = "lower" if metric == "ood/drift_nll" else "higher"
    return (
        claim,
        decisive.verdict(),
        f"PSFT - SFT at matched {X_KEY.replace('_', ' ')} (95% bootstrap over {decisive.items} OOD items "
        f"and {len(decisive.ranges)} seed(s)): {matched}. Decided on {METRICS[metric]}: shown if the "
        f"interval lies wholly {better} than 0, not if wholly on the other side, else cannot decide; "
        f"{protocol}",
    )


def ranges(result: Matched) -> str:
    return ", ".join(f"[{lo:.3f}, {hi:.3f}] (seed {s})" for s, (lo, hi) in result.ranges.items())


def after_rl(rl: dict) -> dict[str, list[dict]]:
    """The RL follow-up's evaluated records in the shape ``paired`` takes (one seed each)."""
    return {name: [run["after"]] for name, run in rl.items()}


def rl_claim(rl: dict) -> tuple[str, str, str]:
    """(5), the paper's RL claim: after the same GRPO, PSFT's start keeps more entropy and forgets less
    out of domain (drift decides; one seed, so 'yes' or 'no' only when entropy and drift agree)."""
    ce, psft = (rl[name]["after"]["metrics"] for name in ("ce", "psft"))
    gap = paired(after_rl(rl), "psft", "test_greedy")
    better = [psft["eval/entropy"] > ce["eval/entropy"], psft["ood/drift_nll"] < ce["ood/drift_nll"]]
    shown = "yes" if all(better) else "no" if not any(better) else UNDECIDED
    return (
        "(5) PSFT is a better start for RL (GRPO)",
        shown,
        f"after GRPO, SFT vs PSFT start: entropy {ce['eval/entropy']:.3f} vs {psft['eval/entropy']:.3f}, "
        f"drift NLL {ce['ood/drift_nll']:.3f} vs {psft['ood/drift_nll']:.3f}, "
        f"MC acc {ce['ood/mc_acc']:.3f} vs {psft['ood/mc_acc']:.3f}; test accuracy PSFT - SFT {gap} "
        "(shown if PSFT's entropy is higher and "
        "its drift lower, not if neither; one seed)",
    )
