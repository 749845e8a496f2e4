"""``max_length`` applied to tokenised examples, and the reports of what it cut or left out.

A truncated example keeps its first ``max_length`` tokens and nothing else: no EOS is put back at
the cut, because the response goes on there and an EOS would teach the model to stop mid-answer.
The cut is counted instead (how many, how many lost their final EOS, the longest length), so a
``max_length`` that is too small shows in the log rather than only in the model's manners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from psft_lightning.data.formats import IGNORE_INDEX, Example
from psft_lightning.errors import DataError

Overlong = Literal["truncate", "skip", "error"]


@dataclass
class SkipReport:
    """What was left out of a split and why, with the first few locations of each reason."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: SkipReport) -> None:
        """Add the report of the next file, as if its rows had followed."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples[reason][: 3 - len(kept)])


@dataclass
class OverlongReport:
    """Examples of a split longer than ``max_length``: how many were truncated (and kept), how many of
    those lost their final EOS, and the longest length seen, which is the ``max_length`` that fits all."""

    truncated: int = 0
    lost_eos: int = 0
    longest: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, length: int, where: str, truncated: bool, lost_eos: bool) -> None:
        self.longest = max(self.longest, length)
        if truncated:
            self.truncated += 1
            self.lost_eos += lost_eos
            if len(self.examples) < 3:
                self.examples.append(where)

    def merge(self, other: OverlongReport) -> None:
        """Add the report of the next file, as if its rows had followed."""
        self.truncated += other.truncated
        self.lost_eos += other.lost_eos
        self.longest = max(self.longest, other.longest)
        self.examples.extend(other.examples[: 3 - len(self.examples)])


def loses_final_eos(example: Example, max_length: int, eos_id: int | None) -> bool:
    """Whether cutting at ``max_length`` drops the EOS that ends the response (its last loss token)."""
    last = max((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), default=-1)
    return last >= max_length and example.labels[last] == eos_id


def fit_length(
    example: Example, max_length: int, overlong: Overlong, where: str
) -> tuple[Example | None, str]:
    """Apply ``max_length``: keep, cut the response, or drop the example (returning the reason)."""
    if len(example.input_ids) <= max_length:
        return example, ""
    if overlong == "error":
        raise DataError(
            f"{where}: {len(example.input_ids)} tokens exceed max_length={max_length} "
            f"(data.overlong=error; use truncate or skip to keep going)"
        )
    if overlong == "skip":
        return None, "longer than max_length"
    cut = Example(example.input_ids[:max_length], example.labels[:max_length])
    if cut.num_loss_tokens == 0:
        return None, "prompt alone fills max_length"
    return cut, ""


def length_warnings(
    split: str, kept: int, skips: SkipReport, overlong: OverlongReport, max_length: int
) -> list[str]:
    """The log lines of a split: what was skipped, what was truncated, and the max_length that fits."""
    lines = []
    if skips.total:
        details = "; ".join(
            f"{n} {reason} (e.g. {', '.join(skips.examples[reason])})" for reason, n in skips.counts.items()
        )
        lines.append(f"{split} data: skipped {skips.total} of {skips.total + kept} rows: {details}")
    longest = overlong.longest
    fits = f"the longest has {longest} tokens, so max_length={longest} keeps every example whole"
    if overlong.truncated:
        lines.append(
            f"{split} data: truncated {overlong.truncated} of {kept} examples to max_length={max_length}, "
            f"{overlong.lost_eos} of them losing their final EOS; {fits} "
            f"(e.g. {', '.join(overlong.examples)})"
        )
    elif lines and longest:
        lines[-1] += f"; {fits}"
    return lines
