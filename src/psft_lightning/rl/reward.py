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


def exact_match_reward(
    answer_pattern: str, scored: list[tuple[int, float]] | None = None
) -> Callable[..., list[float]]:
    """A TRL reward function over the dataset's ``answer`` column. With ``scored``, each completion's
    ``(prompt_index, reward)`` is appended to it in the order TRL scores them (``prompt_passes``)."""
    pattern = re.compile(answer_pattern)

    def exact_match(completions: list, answer: list[str], **columns: object) -> list[float]:
        rewards = [
            float(same_answer(response_answer(completion_text(c), pattern), gold))
            for c, gold in zip(completions, answer, strict=True)
        ]
        if scored is not None:
            scored.extend(zip(columns["prompt_index"], rewards, strict=True))
        return rewards

    return exact_match


def prompt_passes(scored: list[tuple[int, float]], group: int) -> list[dict]:
    """The rewards of each prompt's every pass: TRL scores a prompt's ``group`` samples together, so
    its k-th run of ``group`` rewards in ``scored`` is its k-th pass over the training prompts. One row
    per prompt and pass: ``{"prompt", "pass", "rewards"}`` (passes from 1)."""
    samples: dict[int, list[float]] = {}
    for index, reward in scored:
        samples.setdefault(index, []).append(reward)
    return [
        {"prompt": index, "pass": k // group + 1, "rewards": rewards[k : k + group]}
        for index, rewards in sorted(samples.items())
        for k in range(0, len(rewards), group)
    ]
