"""The results page's section on claim 4: GRPO from the selected SFT and PSFT checkpoints, before and
after, with the paired in-domain difference and the per-step reward and entropy curves."""

from __future__ import annotations

import os
from pathlib import Path

from psft_lightning.study.budgets import LABELS, Budget
from psft_lightning.study.verdicts import METRICS, after_rl, mean, paired

CURVES = ("rl/reward", "rl/entropy")  # per GRPO step, from the TRL log


def curves(record: dict) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per start (label): reward and token entropy per GRPO step, as ``plots.plot`` takes them."""
    return {
        f"{LABELS[name]} -> GRPO": {
            "rl/reward": [(row["step"], row["reward"]) for row in rl["steps"]],
            "rl/entropy": [(row["step"], row["entropy"]) for row in rl["steps"]],
        }
        for name, rl in record.get("rl", {}).items()
    }


def _change(before: float, after: float) -> str:
    return f"{before:.3f} -> {after:.3f}"


def rl_section(record: dict, budget: Budget, plots: list[str], page: Path) -> list[str]:
    """Markdown lines of the section; none when the budget ran no RL follow-up."""
    rl = record.get("rl") or {}
    if not rl:
        return []
    settings = budget.rl
    k = budget.scoring["k"]
    header = ["start", "test acc", f"avg@{k}", *METRICS.values(), "reward (first -> last step)", "GRPO (s)"]
    lines = [
        "## Claim 4: the RL follow-up (GRPO from the selected checkpoints)",
        "",
        f"TRL's `GRPOTrainer` ({settings.get('steps')} steps of {settings.get('batch_size')} training "
        f"prompts x {settings.get('num_generations')} samples, up to {settings.get('max_new_tokens')} new "
        f"tokens, lr {settings.get('lr', 1e-6):g}, no KL term, exact-match reward) from each selected "
        "checkpoint of the first seed, exported as `psft export` does; the result is evaluated as every run "
        "(the same test questions; drift against the base model's own answers). Each cell: before -> after "
        "GRPO.",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    after = after_rl(rl)
    for name, run in rl.items():
        start = record["chosen"][name][0]
        cells = [
            f"{LABELS[name]} ({run['from']})",
            _change(mean(start["test_greedy"]), mean(run["after"]["test_greedy"])),
            _change(mean(start["test_avg_k"]), mean(run["after"]["test_avg_k"])),
            *(_change(start["metrics"][key], run["after"]["metrics"][key]) for key in METRICS),
            _change(run["steps"][0]["reward"], run["steps"][-1]["reward"]),
            f"{run['grpo_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if {"ce", "psft"} <= set(after):
        lines += [
            "",
            "After GRPO, PSFT's start minus SFT's on the same test questions: greedy "
            f"{paired(after, 'psft', 'test_greedy')}, avg@{k} {paired(after, 'psft', 'test_avg_k')} "
            "(paired bootstrap, 95% interval; one seed). The paper reports PSFT -> GRPO ending higher out "
            "of domain with its entropy kept; compare the MC, drift, IF and entropy columns above.",
        ]
    shown = [p for p in plots if Path(p).stem in {c.replace("/", "_") for c in CURVES}]
    lines += ["", *[f"![{Path(p).stem}]({os.path.relpath(p, page.parent)})" for p in shown], ""]
    return lines
