"""Generate long step-by-step reasoning traces with a checkable final answer (for sequence parallelism).

Each row is a running ledger: a start balance and a list of deposits and withdrawals; the answer works
through them one line per transaction (``Step 17: 4512 - 389 = 4123.``) and ends with exactly
``The answer is N.``, the format of data/arithmetic (``evaluation.answers.extract_answer`` reads it), and
the integer ``final``. ``--steps`` sets the length: about 28 characters (tokens under a byte tokenizer,
~12-20 under SmolLM2's) per step, so 250 steps make a trace of several thousand tokens, the lengths
PSFT's reasoning data have (OpenR1-Math up to 8k, LIMO up to 36k). Stdlib only; the same arguments
always produce byte-identical files. Run from the repo root:
``python scripts/make_long_traces.py [--seed 0] [--out data/long_traces] [--train 24] [--val 4]
[--steps 250]``
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def trace(rng: random.Random, steps: int) -> dict[str, object]:
    """One ledger of ``steps`` transactions, its worked answer and its final balance."""
    balance = rng.randint(1000, 9999)
    moves = [rng.randint(1, 999) * (1 if rng.random() < 0.55 else -1) for _ in range(steps)]
    listed = ", ".join(f"{m:+d}" for m in moves)
    question = (
        f"An account starts at {balance}. These transactions follow, in order: {listed}. "
        "Work through them one at a time. What is the final balance?"
    )
    lines = []
    for i, move in enumerate(moves, 1):
        after = balance + move
        lines.append(f"Step {i}: {balance} {'+' if move > 0 else '-'} {abs(move)} = {after}.")
        balance = after
    lines.append(f"The answer is {balance}.")
    return {"question": question, "answer": "\n".join(lines), "final": balance}


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/long_traces")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--steps", type=int, default=250, help="transactions per trace (its length)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    for split, count in (("train", args.train), ("val", args.val)):
        write(Path(args.out) / f"{split}.jsonl", [trace(rng, args.steps) for _ in range(count)])


if __name__ == "__main__":
    main()
