"""Programmatically checkable response constraints, IFEval-style (strict: no loosening of the text)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from psft_lightning.errors import DataError

BULLET = re.compile(r"^\s*[*-]\s+\S", re.MULTILINE)
FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def bullet_count(text: str, n: int) -> bool:
    """Exactly ``n`` markdown bullet lines (``* item`` or ``- item``)."""
    return len(BULLET.findall(text)) == n


def lowercase(text: str, _: Any = None) -> bool:
    """Letters present, and none of them upper case."""
    return any(c.isalpha() for c in text) and text == text.lower()


def uppercase(text: str, _: Any = None) -> bool:
    return any(c.isalpha() for c in text) and text == text.upper()


def includes(text: str, keyword: str) -> bool:
    """``keyword`` appears as a whole word, in any case."""
    return re.search(rf"\b{re.escape(keyword)}\b", text, re.IGNORECASE) is not None


def excludes(text: str, keyword: str) -> bool:
    return not includes(text, keyword)


def max_words(text: str, n: int) -> bool:
    """At most ``n`` whitespace-separated words (and at least one)."""
    return 0 < len(text.split()) <= n


def ends_with(text: str, phrase: str) -> bool:
    return text.strip().endswith(phrase)


def starts_with(text: str, phrase: str) -> bool:
    return text.strip().startswith(phrase)


def no_comma(text: str, _: Any = None) -> bool:
    return bool(text.strip()) and "," not in text


def json_object(text: str, _: Any = None) -> bool:
    """The whole response parses as JSON (an optional ```json fence around it is allowed, as in IFEval)."""
    try:
        json.loads(FENCE.sub("", text.strip()))
    except ValueError:
        return False
    return True


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "bullet_count": bullet_count,
    "lowercase": lowercase,
    "uppercase": uppercase,
    "includes": includes,
    "excludes": excludes,
    "max_words": max_words,
    "ends_with": ends_with,
    "starts_with": starts_with,
    "no_comma": no_comma,
    "json": json_object,
}


def validate_checks(checks: Any, where: str) -> list[dict[str, Any]]:
    """Each check is ``{"kind": <one of CHECKS>, "value": <argument or null>}``."""
    if not isinstance(checks, list) or not checks:
        raise DataError(f"{where}: 'checks' must be a non-empty list of {{kind, value}} objects")
    for check in checks:
        if not isinstance(check, dict) or check.get("kind") not in CHECKS:
            raise DataError(f"{where}: unknown check {check!r}; known kinds: {', '.join(CHECKS)}")
    return checks


def follows(text: str, checks: list[dict[str, Any]]) -> bool:
    """Strict prompt-level accuracy: every constraint of the prompt holds."""
    return all(CHECKS[c["kind"]](text, c.get("value")) for c in checks)
