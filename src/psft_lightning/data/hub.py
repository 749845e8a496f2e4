"""Hub datasets by name: ``hub:org/name?name=config&split=test&revision=main`` -> ``datasets.load_dataset``.

The part after ``hub:`` is what ``load_dataset`` takes as its path (a hub id, or a local directory of
data files for machines without access); ``name`` picks a config, ``split`` overrides the split the
list asks for (``train`` for ``train_files``, ``validation`` for ``val_files``; slices such as
``train[:1000]`` work), ``revision`` pins a commit, branch or tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from psft_lightning.errors import ConfigError, DataError

PREFIX = "hub:"
KEYS = ("name", "split", "revision")


@dataclass(frozen=True)
class HubSpec:
    entry: str
    path: str
    name: str | None
    split: str
    revision: str | None

    @property
    def label(self) -> str:
        """How rows of this dataset are located in messages: ``hub:org/name[split]``."""
        config = f"?name={self.name}" if self.name else ""
        return f"{PREFIX}{self.path}{config}[{self.split}]"


def is_hub(entry: str) -> bool:
    return entry.startswith(PREFIX)


def parse_hub(entry: str, split: str) -> HubSpec:
    """The dataset, config, split and revision an entry names; unknown query keys are refused."""
    path, _, query = entry[len(PREFIX) :].partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(KEYS))
    if not path or unknown:
        what = f"unknown option {unknown[0]!r} (known: {', '.join(KEYS)})" if unknown else "no dataset name"
        raise ConfigError(
            f"{entry}: {what}; write hub:ORG/NAME, optionally with ?name=CONFIG&split=SPLIT&revision=REV"
        )
    return HubSpec(entry, path, options.get("name"), options.get("split", split), options.get("revision"))


@lru_cache(maxsize=8)
def load_hub(spec: HubSpec):
    """The split as a ``datasets.Dataset`` (downloaded into ``datasets``' own cache on first use)."""
    import datasets

    try:
        return datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)
    except ConnectionError as err:
        raise DataError(
            f"{spec.entry}: the Hugging Face hub is unreachable ({err}). On a machine that can download, "
            f"save it with datasets.load_dataset({spec.path!r}, {spec.name!r}).save_to_disk(DIR) and give "
            "DIR in data.train_files / data.val_files"
        ) from err
    except Exception as err:  # unknown dataset, config or split: datasets says which ones exist
        raise DataError(f"{spec.entry}: cannot load the dataset ({type(err).__name__}: {err})") from err
