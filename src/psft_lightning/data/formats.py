"""Row -> tokenised example: ``input_ids`` and ``labels`` (-100 where no loss is taken).

Three formats, as TRL's SFTTrainer has them: chat ``messages`` (loss on assistant turns only, via
the tokenizer's chat template), ``prompt``/``completion`` (loss on the completion) and plain
``text`` (loss everywhere). Every response ends with the end-of-sequence token as a loss token,
so the model learns to stop. Field names are configurable, so a file with ``question``/``answer``
columns works as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from jinja2 import TemplateError

from psft_lightning.errors import ConfigError, DataError

IGNORE_INDEX = -100
Format = Literal["auto", "messages", "prompt_completion", "text"]
FORMATS: tuple[str, ...] = get_args(Format)
# The roles chat templates are written for; anything else would be rendered as a literal header (or
# refused by the template), so it is refused here with its location.
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Fields:
    """Which columns of a row hold what."""

    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    text: str = "text"
    system: str | None = None

    @classmethod
    def of(cls, fields: Fields | dict | None) -> Fields:
        """``fields`` as Fields: Python callers may pass the YAML form (a dict), None means the defaults."""
        if not isinstance(fields, dict):
            return fields or cls()
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"data.fields has unknown keys {unknown}; known: {known}")
        return cls(**fields)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _present(row: dict) -> list[str]:
    """Columns that hold a value. Parquet and saved datasets give a row None for a column it lacks
    (a merged dataset has the other format's columns), so None counts as absent."""
    return sorted(name for name, value in row.items() if value is not None)


def detect_format(row: dict, fields: Fields, where: str) -> str:
    present = _present(row)
    if fields.messages in present:
        return "messages"
    if fields.prompt in present and fields.completion in present:
        return "prompt_completion"
    if fields.text in present:
        return "text"
    nulls = sorted(set(row) - set(present))
    raise DataError(
        f"{where}: cannot tell the format of this row (columns: {present}"
        f"{f'; null: {nulls}' if nulls else ''}). Expected a "
        f"{fields.messages!r} list, {fields.prompt!r}+{fields.completion!r} strings, or a {fields.text!r} "
        f"string; map your column names with data.fields (e.g. prompt: question, completion: answer)."
    )


def _missing(row: dict, name: str, where: str) -> DataError:
    null = " (it is null)" if name in row else ""
    return DataError(f"{where}: missing field {name!r}{null} (row has: {_present(row)})")


def _string_field(row: dict, name: str, where: str, allow_empty: bool = False) -> str:
    value = row.get(name)
    if value is None:
        raise _missing(row, name, where)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {name!r} must be a string, got {type(value).__name__}: {value!r:.80}"
        )
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field {name!r} is empty; an empty response has nothing to learn from")
    return value


def _messages_field(row: dict, name: str, where: str) -> list[dict[str, str]]:
    messages = row.get(name)
    if messages is None:
        raise _missing(row, name, where)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field {name!r} must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        at = f"{where}: {name}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{at} must be an object with 'role' and 'content', got {type(message).__name__}")
        role = _string_field(message, "role", at)
        if role not in ROLES:
            raise DataError(
                f"{at} has role {role!r}; the roles chat templates know are {', '.join(ROLES)}. "
                "ShareGPT-style roles need renaming: human -> user, gpt or bot -> assistant"
            )
        _string_field(
            message, "content", at, allow_empty=role != "assistant" or bool(message.get("tool_calls"))
        )
        if message.get("tool_calls") is not None and not isinstance(message["tool_calls"], list):
            raise DataError(
                f"{at}: tool_calls must be a list of calls, got {type(message['tool_calls']).__name__}"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field {name!r} has no assistant message, so there is nothing to learn")
    kept = ("role", "content", "tool_calls")  # what chat templates render
    return [{key: m[key] for key in kept if m.get(key) is not None} for m in messages]


def _opening_header_end(render, upto: str) -> int:
    """Where the response starts in a conversation that opens with the assistant (rendered as ``upto``).

    There is no earlier prefix to render with the generation prompt (transformers refuses an empty
    conversation), so the template's assistant header is taken as what ``add_generation_prompt``
    appends to a one-message conversation, and skipped where it first occurs.
    """
    probe = [{"role": "user", "content": "x"}]
    try:
        plain = render(probe, tokenize=False)
        header = render(probe, tokenize=False, add_generation_prompt=True)[len(plain) :]
    except Exception:
        return 0
    at = upto.find(header) if header else -1
    return at + len(header) if at >= 0 else 0


def _chat_example(tokenizer, messages: list[dict[str, str]], where: str) -> Example:
    """Tokenise a conversation; loss tokens are the character spans the template gives assistant turns.

    Spans come from rendering growing prefixes of the conversation (without, then with, each
    assistant turn), so any chat template works without ``{% generation %}`` markers. A span ends
    with the turn's end-of-sequence token when the template renders one there.
    """

    def render(conversation: list[dict[str, str]], **kwargs) -> str:
        try:
            return tokenizer.apply_chat_template(conversation, **kwargs)
        except TemplateError as err:  # the template's own raise_exception(...), e.g. roles must alternate
            raise DataError(f"{where}: the chat template refuses this conversation: {err}") from err

    for i, message in enumerate(messages):
        if message.get("tool_calls"):
            without = {key: value for key, value in message.items() if key != "tool_calls"}
            prefix = messages[:i]
            if render([*prefix, message], tokenize=False) == render([*prefix, without], tokenize=False):
                raise DataError(
                    f"{where}: message {i} ({message['role']}) has tool_calls, which this tokenizer's chat "
                    "template does not render, so they would be dropped from training. Use a model whose "
                    "template renders tool calls, or write the call into the message's content."
                )
    full = render(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        upto = render(messages[: i + 1], tokenize=False)
        before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError(
                f"{where}: the chat template does not render conversations prefix by prefix, so the "
                f"assistant tokens cannot be located. Use a template that appends turns without rewriting "
                f"earlier ones."
            )
        start, end = (len(before) if i else _opening_header_end(render, upto)), len(upto)
        # End the span at the turn's end-of-sequence token: what a template puts after it (ChatML's
        # "\n") separates turns and is not part of the response.
        eos = getattr(tokenizer, "eos_token", None)
        if eos and full.rfind(eos, start, end) >= 0:
            end = full.rfind(eos, start, end) + len(eos)
        spans.append((start, end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for j, (start, _) in enumerate(enc["offset_mapping"]):
        if any(lo <= start < hi for lo, hi in spans):
            labels[j] = input_ids[j]
    example = Example(input_ids, labels)
    n_loss = example.num_loss_tokens
    if n_loss == 0 or n_loss == len(input_ids):
        what = "no token" if n_loss == 0 else "every token"
        raise DataError(
            f"{where}: the chat template's assistant mask covers {what} of the conversation, so the loss "
            f"would be {'empty' if n_loss == 0 else 'taken on the prompt too'}. The template or the "
            f"messages' roles are not what this trainer expects (roles {', '.join(ROLES)})."
        )
    return example


def render_prompt(
    tokenizer, prompt: str, use_chat_template: bool = True, system: str | None = None
) -> list[int]:
    """Token ids of a prompt as training renders it, ending where the response starts (for generation)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else []


def _plain_example(tokenizer, prompt: str, completion: str) -> Example:
    prompt_ids = render_prompt(tokenizer, prompt, use_chat_template=False)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Example(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def row_to_example(
    row: Any, tokenizer, fmt: str, fields: Fields, use_chat_template: bool, where: str
) -> Example:
    """Tokenise one dataset row; ``where`` (file and row) prefixes every error."""
    check_format(fmt)
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if fmt == "auto":
        fmt = detect_format(row, fields, where)
    chat = use_chat_template and getattr(tokenizer, "chat_template", None)
    if fmt == "messages":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"{where}: 'messages' rows need a tokenizer with a chat template; this one has none"
            )
        example = _chat_example(tokenizer, _messages_field(row, fields.messages, where), where)
    elif fmt == "prompt_completion":
        prompt = _string_field(row, fields.prompt, where, allow_empty=True)
        completion = _string_field(row, fields.completion, where)
        if chat:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            if fields.system and row.get(fields.system):
                messages.insert(0, {"role": "system", "content": _string_field(row, fields.system, where)})
            example = _chat_example(tokenizer, messages, where)
        else:
            example = _plain_example(tokenizer, prompt, completion)
    else:
        example = _plain_example(tokenizer, "", _string_field(row, fields.text, where))
    example.labels[0] = IGNORE_INDEX  # the first token is never a target; keeps packed examples apart
    return example
