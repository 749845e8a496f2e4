"""Final answers: read with an answer pattern (``The answer is N.`` by default, ``#### (\\S+)`` for
grade-school math data) and compared by value when both are numbers, else as normalised text.

A row's reference answer is its final field when it has one, else the answer its completion (a worked
solution) ends with; every evaluation, the study's selection and the RL rewards read it this way.
"""

from __future__ import annotations

import re
from decimal import Decimal

ANSWER_PATTERN = re.compile(r"The answer is (-?\d+)\.")
NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+")  # 1000, 1,000, 3.50, .5
TRAILING = ".,;:!?"  # punctuation a sentence may end an answer with


def last_answer(text: str, pattern: re.Pattern = ANSWER_PATTERN) -> str | None:
    """The pattern's first group (its whole match without groups) of the last match in ``text``, or
    None when there is none."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if pattern.groups else last.group(0)).strip()


def number(text: str) -> Decimal | None:
    """``text`` as an exact number (``1,000``, ``$3.50``, ``-2.``, ``+7``), or None when it is not one."""
    value = text.strip().removesuffix(".").removeprefix("$")
    sign = value[:1] if value[:1] in "+-" else ""
    value = value[len(sign) :].removeprefix("$")
    if not NUMBER.fullmatch(value):
        return None
    return Decimal(sign + value.replace(",", ""))


def normalised(text: str) -> str:
    """Text as answers are compared: casefolded, inner whitespace collapsed, no trailing punctuation."""
    return " ".join(text.split()).casefold().rstrip(TRAILING).rstrip()


def same_answer(answer: str | None, reference: str) -> bool:
    """Whether ``answer`` is ``reference``: by value when both are numbers (``1,000`` = ``1000``,
    ``3.50`` = ``3.5``), else as normalised text. No answer (None) is wrong."""
    if answer is None:
        return False
    mine, theirs = number(answer), number(reference)
    if mine is not None and theirs is not None:
        return mine == theirs
    return normalised(answer) == normalised(reference)


def reference_answer(
    row: dict, final_field: str, completion_field: str, pattern: re.Pattern = ANSWER_PATTERN
) -> str | None:
    """The answer ``row`` asks for: its ``final_field`` (the pattern's answer in it when it is a worked
    solution, else the value itself), else the last answer the pattern finds in its completion; None
    when it has neither."""
    final = row.get(final_field)
    if isinstance(final, (str, int, float)) and not isinstance(final, bool) and str(final).strip():
        text = str(final).strip()
        return last_answer(text, pattern) or text
    completion = row.get(completion_field)
    return last_answer(completion, pattern) if isinstance(completion, str) else None


def extract_answer(text: str) -> int | None:
    """The number of the last ``The answer is N.`` in ``text``, or None when the model wrote none."""
    found = last_answer(text)
    return None if found is None else int(found)


def is_correct(text: str, final: int | str, pattern: re.Pattern = ANSWER_PATTERN) -> bool:
    """Whether the last answer ``pattern`` finds in ``text`` is ``final``; an answer without one is wrong."""
    return same_answer(last_answer(text, pattern), str(final))


def accuracy(texts: list[str], finals: list[int | str], pattern: re.Pattern = ANSWER_PATTERN) -> float:
    """Fraction of ``texts`` whose final answer equals the matching entry of ``finals``."""
    if len(texts) != len(finals):
        raise ValueError(f"{len(texts)} answers for {len(finals)} questions")
    if not texts:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(is_correct(t, f, pattern) for t, f in zip(texts, finals, strict=True)) / len(texts)
