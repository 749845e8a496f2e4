"""Final-answer extraction and exact match for the arithmetic rows (``The answer is N.``)."""

from __future__ import annotations

import re

ANSWER_PATTERN = re.compile(r"The answer is (-?\d+)\.")


def extract_answer(text: str) -> int | None:
    """The number of the last ``The answer is N.`` in ``text``, or None when the model wrote none."""
    matches = ANSWER_PATTERN.findall(text)
    return int(matches[-1]) if matches else None


def is_correct(text: str, final: int) -> bool:
    """Exact match of the extracted final answer; an answer without the sentence is wrong."""
    return extract_answer(text) == int(final)


def accuracy(texts: list[str], finals: list[int]) -> float:
    """Fraction of ``texts`` whose final answer equals the matching entry of ``finals``."""
    if len(texts) != len(finals):
        raise ValueError(f"{len(texts)} answers for {len(finals)} questions")
    if not texts:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(is_correct(t, f) for t, f in zip(texts, finals, strict=True)) / len(texts)
