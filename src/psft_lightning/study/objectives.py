"""Which objectives the study trains, from the registry, and the shipped config of each."""

from __future__ import annotations

from pathlib import Path

import yaml

import psft_lightning.objectives as objectives_package
from psft_lightning.objectives import available_objectives, objective_class

REFERENCE = "ce"  # the objective every claim is compared against: first in the study's order


def study_objectives() -> list[str]:
    """The objectives the study trains: every one the registry knows from this package (a third-party
    plugin ships no config here), the reference first."""
    names = [
        name
        for name in available_objectives()
        if objective_class(name).__module__.startswith(f"{objectives_package.__name__}.")
    ]
    return sorted(names, key=lambda name: (name != REFERENCE, name))


def objective_configs(root: Path) -> dict[str, Path]:
    """Each study objective's shipped config under ``root``/configs: the one named after it, else the
    one config that selects it (``sft.yaml`` trains ``ce``)."""
    selecting: dict[str, list[Path]] = {}
    for path in sorted((root / "configs").glob("*.yaml")):
        spec = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model", {}).get("objective")
        spec = spec.get("class_path") if isinstance(spec, dict) else spec
        if isinstance(spec, str):
            selecting.setdefault(objective_class(spec).name, []).append(path)
    found = {}
    for name in study_objectives():
        paths = selecting.get(name, [])
        named = [path for path in paths if path.stem == name]
        if named or len(paths) == 1:
            found[name] = (named or paths)[0]
    return found
