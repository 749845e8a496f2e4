"""The exact-match reward: 1 when the response's final answer equals the row's, else 0.

The final answer is the last match of the answer pattern, as the evaluation reads ``The answer is N.``
(``psft_lightning.evaluation.answers``), compared by value when both are numbers (``1,000`` = ``1000``)
and as normalised text otherwise; a response without one scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from psft_lightning.evaluation.answers import last_answer, same_answer


def gold_answer(raw: str | int | float, pattern: re.Pattern) -> str:
    """The answer a row asks for: the pattern's last match in a worked solution, else the value itself."""
    text = str(raw).strip()
    found = response_answer(text, pattern)
    return text if found is None else found


def response_answer(text: str, pattern: re.Pattern) -> str | None:
    """The last final answer written in ``text``, or None when there is none."""
    return last_answer(text, pattern)


def completion_text(completion: str | list[dict]) -> str:
    """TRL passes plain completions as text and chat completions as a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def exact_match_reward(answer_pattern: str) -> Callable[..., list[float]]:
    """A TRL reward function over the dataset's ``answer`` column."""
    pattern = re.compile(answer_pattern)

    def exact_match(completions: list, answer: list[str], **_: object) -> list[float]:
        return [
            float(same_answer(response_answer(completion_text(c), pattern), gold))
            for c, gold in zip(completions, answer, strict=True)
        ]

    return exact_match
