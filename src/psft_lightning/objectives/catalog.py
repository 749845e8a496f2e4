"""``psft objectives``: every registered objective (built-in and entry-point) with its one-line summary,
hyper-parameters and declared needs, so users can pick one without reading the source."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from psft_lightning.commands import command_parser
from psft_lightning.objectives.base import available_objectives, objective_class


@dataclass(frozen=True)
class Entry:
    name: str
    class_path: str
    summary: str
    params: list[str]
    needs: str


def _params(cls: type) -> list[str]:
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "required" if p.default is p.empty else repr(p.default)
        out.append(f"{p.name}={default}")
    return out


def _needs(cls: type) -> str:
    try:
        needs = cls().needs()
    except TypeError:  # required arguments: the declaration depends on them
        return "(depends on its arguments)"
    parts = []
    if needs.old_policy_from is not None:
        parts.append(f"old policy from step {needs.old_policy_from}")
    if needs.ref_kl:
        parts.append(f"{needs.ref_kl} KL to the initial model")
    if needs.vocab_fn is not None:
        parts.append("vocabulary function" + (" with reference logits" if needs.vocab_ref else ""))
    if needs.entropy:
        parts.append("entropy")
    return ", ".join(parts) or "log-probs only"


def catalog() -> list[Entry]:
    entries = []
    for name in available_objectives():
        cls = objective_class(name)
        doc = inspect.getdoc(cls) or ""
        summary = doc.splitlines()[0] if doc else ""
        path = f"{cls.__module__}.{cls.__qualname__}"
        entries.append(Entry(name, path, summary, _params(cls), _needs(cls)))
    return entries


def objectives_main(argv: list[str]) -> None:
    parser = command_parser(
        prog="psft objectives",
        description="List every registered objective: select one with --model.objective=NAME, or with "
        "its class path and init_args to set hyper-parameters.",
    )
    parser.parse_args(argv)
    for entry in catalog():
        print(f"{entry.name}  ({entry.class_path})")
        print(f"    {entry.summary}")
        print(f"    hyper-parameters: {', '.join(entry.params) or 'none'}")
        print(f"    needs: {entry.needs}")
