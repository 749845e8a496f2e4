"""The results page's section on claim 4: GRPO from the selected SFT and PSFT checkpoints, before and
after, with the paired in-domain difference and the per-step reward and entropy curves."""

from __future__ import annotations

import os
from pathlib import Path

from psft_lightning.study.budgets import LABELS, Budget
from psft_lightning.study.stats import pass_change, window_change
from psft_lightning.study.verdicts import METRICS, after_rl, mean, paired

CURVES = ("rl/reward", "rl/entropy")  # per GRPO step, from the TRL log


def follow_ups(record: dict) -> list[tuple[str, dict]]:
    """(objective, follow-up) of every GRPO run: the first seed's, then the later seeds'."""
    later = record.get("rl_seeds", {})
    return [
        (name, rl) for name, first in record.get("rl", {}).items() for rl in [first, *later.get(name, [])]
    ]


def rl_label(name: str, rl: dict) -> str:
    return f"{LABELS[name]} -> GRPO" + (f" (seed {rl['seed']})" if "seed" in rl else "")


def curves(record: dict) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per start and seed (label): reward and token entropy per GRPO step, as ``plots.plot`` takes them."""
    return {
        rl_label(name, rl): {
            "rl/reward": [(row["step"], row["reward"]) for row in rl["steps"]],
            "rl/entropy": [(row["step"], row["entropy"]) for row in rl["steps"]],
        }
        for name, rl in follow_ups(record)
    }


def reward_change(run: dict) -> str:
    """The training reward's change with its interval: on the same prompts, last pass minus first,
    when GRPO came back to its prompts; else the last quarter of the steps minus the first quarter
    (a step's reward is the mean over its samples; the first and last step alone on a short run)."""
    if (change := pass_change(run.get("prompt_rewards", []))) is not None:
        return f"{change} ({change.n} prompts, last pass - first)"
    rewards = [row["reward"] for row in run["steps"]]
    if len(rewards) < 2:
        return "-"
    window = max(1, len(rewards) // 4)
    return f"{window_change(rewards, window)} (steps, {window} each)"


def pool(settings: dict) -> str:
    """The prompts GRPO cycles over, when it is told to (``GRPOSettings.prompts``)."""
    prompts = settings.get("prompts")
    if not prompts:
        return ""
    passes = settings["steps"] * settings["batch_size"] / prompts
    return f", over the first {prompts} training prompts ({passes:g} passes)"


def _change(before: float, after: float) -> str:
    return f"{before:.3f} -> {after:.3f}"


def rl_section(record: dict, budget: Budget, plots: list[str], page: Path) -> list[str]:
    """Markdown lines of the section; none when the budget ran no RL follow-up."""
    rl = record.get("rl") or {}
    if not rl:
        return []
    settings = record.get("rl_settings") or budget.rl
    k = budget.scoring["k"]
    header = ["start", "test acc", f"avg@{k}", *METRICS.values(), "training reward change", "GRPO (s)"]
    lines = [
        "## Claim 4: the RL follow-up (GRPO from the selected checkpoints)",
        "",
        f"TRL's `GRPOTrainer` ({settings.get('steps')} steps of {settings.get('batch_size')} training "
        f"prompts x {settings.get('num_generations')} samples{pool(settings)}, up to "
        f"{settings.get('max_new_tokens')} new tokens, temperature {settings.get('temperature', 1.0):g}, "
        f"lr {settings.get('lr', 1e-6):g}{' in bf16-mixed' if settings.get('bf16') else ''}, no KL term, "
        "exact-match reward) from each selected checkpoint of the first training seed, exported as `psft "
        "export` does, at each GRPO seed; the result is evaluated as every run (the same test questions; "
        "drift against the base model's own answers). Each cell: before -> after GRPO. The training reward "
        "change is each prompt's mean reward (over its samples) at GRPO's last pass over the prompts minus "
        "at its first, with a 95% paired bootstrap interval over the prompts (a run that never came back "
        "to a prompt: the last quarter of the steps minus the first, bootstrapped over the steps).",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    after = after_rl(rl)
    for name, run in follow_ups(record):
        start = record["chosen"][name][0]
        cells = [
            f"{rl_label(name, run)} from {run['from']}",
            _change(mean(start["test_greedy"]), mean(run["after"]["test_greedy"])),
            _change(mean(start["test_avg_k"]), mean(run["after"]["test_avg_k"])),
            *(_change(start["metrics"][key], run["after"]["metrics"][key]) for key in METRICS),
            reward_change(run),
            f"{run['grpo_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if {"ce", "psft"} <= set(after):
        lines += [
            "",
            "After GRPO, PSFT's start minus SFT's on the same test questions: greedy "
            f"{paired(after, 'psft', 'test_greedy')}, avg@{k} {paired(after, 'psft', 'test_avg_k')} "
            "(paired bootstrap, 95% interval; first GRPO seed). The paper reports PSFT -> GRPO ending higher "
            "out of domain with its entropy kept; compare the MC, drift, IF and entropy columns above.",
        ]
    shown = [p for p in plots if Path(p).stem in {c.replace("/", "_") for c in CURVES}]
    lines += ["", *[f"![{Path(p).stem}]({os.path.relpath(p, page.parent)})" for p in shown], ""]
    return lines
