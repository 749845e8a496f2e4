"""The paper's own numbers (arXiv 2508.17784, transcribed in shared/paper/psft-paper-numbers.md), shown
beside ours and always labelled as the paper's."""

from __future__ import annotations

SETUP = (
    "Qwen2.5-7B-Instruct on OpenR1-Math; SFT lr 2e-5 at batch 256, PSFT lr 1e-6 at mini-batch 32, 8 "
    "optimizer steps per snapshot, clip 0.28; checkpoints chosen by in-domain score (SFT step 700, "
    "SFT-KL 900, PSFT 1300)"
)
COLUMNS = ("Base", "SFT", "SFT-KL", "PSFT (warm-up)", "PSFT")
TABLE_1 = [  # Qwen2.5-7B-Instruct, Table 1
    ("in-domain average (6 math benchmarks)", (37.98, 47.99, 47.08, 48.17, 46.98)),
    ("IFEval", (73.94, 54.42, 55.44, 55.07, 73.03)),
    ("TruthfulQA", (66.10, 63.14, 61.31, 66.37, 67.16)),
    ("out-of-domain average (7)", (59.85, 57.90, 57.38, 58.53, 61.26)),
]
AFTER_GRPO = (
    "in-domain SFT->GRPO 52.40 vs PSFT->GRPO 53.31; out of domain 59.90 vs 64.06; IFEval 53.89 vs 73.73"
)


def markdown() -> list[str]:
    """The paper's Table 1 rows as a Markdown table, with its setup."""
    lines = [
        f"The paper's own numbers ({SETUP}), not ours:",
        "",
        "| metric (the paper's) | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for name, values in TABLE_1]
    lines += ["", f"After GRPO (the paper's): {AFTER_GRPO}."]
    return lines
