"""The paper's four claims as computed verdicts, with the caveats a reader needs."""

from __future__ import annotations

import math
import os

from psft_lightning.evaluation import EvalConfig
from psft_lightning.study.budgets import LABELS, Budget

ACCURACY_FLOOR = 0.25  # below this for both SFT and PSFT, "matches" only means "both fail alike"
INCONCLUSIVE = "inconclusive"


def yes_no(shown: bool) -> str:
    return "yes" if shown else "no"


def caveats(
    claims: list[tuple[str, str, str]], table: dict, budget: Budget, ev: EvalConfig, load: tuple[float, float]
) -> list[str]:
    """Why a claim may not show at this scale, chosen by the computed verdicts (no number typed in)."""
    verdict = {claim[:3]: v for claim, v, _ in claims}
    notes = [
        f"- Scale: a 135M model, {budget.steps} optimizer steps, {budget.steps * budget.batch_size} training "
        "examples; the paper trains 7-8B models far longer on real math data. Effects that build up over "
        "many updates (entropy collapse under prolonged training, forgetting) are small here.",
        f"- Noise: one question is {100 / ev.num_eval:.1f} points of in-domain accuracy"
        + (f" and {100 / ev.num_mc:.1f} points of MC accuracy" if ev.num_mc else "")
        + "; OOD differences of a question or two are within noise.",
    ]
    ce_a, psft_a = (table[n]["eval/accuracy"][0] for n in ("ce", "psft"))
    if verdict["(2)"] == INCONCLUSIVE and max(ce_a, psft_a) < ACCURACY_FLOOR:
        notes.append(
            "- (2) is not tested by this budget: in-domain accuracy stays below "
            f"{ACCURACY_FLOOR:.0%} for both SFT and PSFT. The models learn the answer format first (see "
            "the 'answer format' column) and the arithmetic later; the `full` budget trains on many more "
            "examples."
        )
    elif verdict["(2)"] == INCONCLUSIVE:
        notes.append(
            f"- (2) cannot be decided on {ev.num_eval} questions: PSFT trails SFT by "
            f"{(ce_a - psft_a) * ev.num_eval:.0f} of them, between one and two standard errors. The paper's "
            "parity is reached after far longer training; a plausible reason for the gap here (not tested) "
            "is that the trust region bounds how far each snapshot period moves the policy, which matters "
            "most in a short run. The `full` budget evaluates more questions after more steps."
        )
    if verdict["(3)"] == "yes":
        base_d, ce_d, psft_d = (table[n]["ood/drift_nll"][0] for n in ("base", "ce", "psft"))
        notes.append(
            f"- (3) rests on the drift NLL: SFT moved it by {ce_d - base_d:+.3f} nats/token from the base "
            f"model, PSFT by {psft_d - base_d:+.3f}. The multiple-choice and instruction-following scores "
            "barely move at this budget, so they neither support nor contradict it."
        )
    if verdict["(4)"] == "no":
        outside = []
        for name in ("kl", "psft_warmup"):
            for key in ("eval/entropy", "ood/drift_nll"):
                lo, hi = sorted(table[n][key][0] for n in ("ce", "psft"))
                value = table[name][key][0]
                gap = lo - value if value < lo else value - hi
                if gap > 0:
                    outside.append(f"{LABELS[name]} {key.split('/')[1]} by {gap:.3f}")
        notes.append(
            f"- (4) fails where a row lies outside the [SFT, PSFT] interval: {'; '.join(outside)}. A "
            "plausible reason (not tested): PSFT (warm-up) takes its CE steps at the top of the "
            "learning-rate schedule, so its trust region starts from an already SFT-like model."
        )
    if verdict["(1)"] == "no":
        notes.append("- (1) needs more steps: the entropy curves above show where SFT and PSFT part.")
    if max(load) > (os.cpu_count() or 1) + 0.5:
        notes.append(
            "- Wall times were measured while other jobs shared the CPU (see the load average above), so "
            "they compare poorly across rows."
        )
    return notes


def parity_verdict(ce_acc: float, psft_acc: float, se: float) -> str:
    """Claim (2): parity within one standard error; a gap of one to two is noise we cannot resolve."""
    if max(ce_acc, psft_acc) < ACCURACY_FLOOR or ce_acc - 2 * se <= psft_acc < ce_acc - se:
        return INCONCLUSIVE
    return yes_no(psft_acc >= ce_acc - se)


def verdicts(table: dict, num_eval: int) -> list[tuple[str, str, str]]:
    """Each claim, whether this run shows it, and the numbers it was decided on."""

    def m(name: str, key: str) -> float:
        return table[name][key][0]

    base_h, ce_h, psft_h = m("base", "eval/entropy"), m("ce", "eval/entropy"), m("psft", "eval/entropy")
    claims = [
        (
            "(1) SFT's token entropy collapses while PSFT's stays up",
            yes_no(ce_h < psft_h and ce_h < base_h),
            f"probe entropy: base {base_h:.3f}, SFT {ce_h:.3f}, PSFT {psft_h:.3f} "
            "(shown if SFT < PSFT and SFT < base)",
        )
    ]
    ce_a, psft_a = m("ce", "eval/accuracy"), m("psft", "eval/accuracy")
    se = math.sqrt(max(ce_a * (1 - ce_a) + psft_a * (1 - psft_a), 1.0 / num_eval) / num_eval)
    claims.append(
        (
            "(2) PSFT matches SFT in domain",
            parity_verdict(ce_a, psft_a, se),
            f"greedy accuracy: SFT {ce_a:.3f}, PSFT {psft_a:.3f}; shown if PSFT >= SFT - 1 SE, "
            f"not if PSFT < SFT - 2 SE, inconclusive between (SE of the difference {se:.3f} on "
            f"{num_eval} questions)",
        )
    )
    ce_d, psft_d = m("ce", "ood/drift_nll"), m("psft", "ood/drift_nll")
    ce_mc, psft_mc = m("ce", "ood/mc_acc"), m("psft", "ood/mc_acc")
    ce_if, psft_if = m("ce", "ood/if_strict"), m("psft", "ood/if_strict")
    claims.append(
        (
            "(3) PSFT forgets less out of domain",
            yes_no(psft_d < ce_d),
            f"drift NLL on the base model's answers: SFT {ce_d:.3f}, PSFT {psft_d:.3f} (decides; lower is "
            f"less forgetting); MC acc SFT {ce_mc:.3f} vs PSFT {psft_mc:.3f}; IF strict SFT {ce_if:.3f} "
            f"vs PSFT {psft_if:.3f}",
        )
    )
    between = []
    for name in ("kl", "psft_warmup"):
        for key in ("eval/entropy", "ood/drift_nll"):
            lo, hi = sorted((m("ce", key), m("psft", key)))
            between.append((name, key, lo <= m(name, key) <= hi, m(name, key)))
    claims.append(
        (
            "(4) SFT-KL and PSFT (warm-up) sit between SFT and PSFT",
            yes_no(all(ok for *_, ok, _ in between)),
            "; ".join(
                f"{LABELS[n]} {k.split('/')[1]} {v:.3f} {'in' if ok else 'outside'} [SFT, PSFT]"
                for n, k, ok, v in between
            ),
        )
    )
    return claims
