"""Draw TensorBoard scalars of any runs as PNG comparison plots, one line per run, one file per tag.

    psft plot runs/sft runs/psft --out plots/
    psft plot "runs/study/seed0/*" --tags train/loss eval/entropy --out plots/

(``python scripts/plot_runs.py`` takes the same arguments.)

A run is any folder holding ``events.out.tfevents.*`` files (found recursively under each argument);
its label is its path relative to the arguments' common folder, without Lightning's ``version_N``.
``psft/clip_frac`` is drawn as ``psft/clip_frac_low + psft/clip_frac_high`` when not logged itself.
Needs matplotlib (``pip install 'psft-lightning[plots]'``).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from pathlib import Path

from psft_lightning.commands import command_parser
from psft_lightning.errors import ConfigError

DEFAULT_TAGS = [
    "eval/entropy",
    "train/entropy",
    "train/loss",
    "eval/accuracy",
    "psft/clip_frac",
    "ood/drift_nll",
]
DERIVED = {"psft/clip_frac": ("psft/clip_frac_low", "psft/clip_frac_high")}

Series = dict[str, list[tuple[int, float]]]


def find_runs(patterns: list[str]) -> dict[str, str]:
    """Label -> folder for every folder with event files under the given folders or globs."""
    folders: list[str] = []
    for pattern in patterns:
        for root in sorted(glob.glob(pattern)) or [pattern]:
            for folder, _, files in sorted(os.walk(root)):
                if any(f.startswith("events.out.tfevents.") for f in files):
                    folders.append(os.path.normpath(folder))
    if not folders:
        missing = [pattern for pattern in patterns if not glob.glob(pattern)]
        where = f"; {', '.join(missing)} does not exist" if missing else ""
        raise ConfigError(
            f"no TensorBoard event files (events.out.tfevents.*) under {', '.join(patterns)}{where}"
        )
    common = os.path.commonpath(folders) if len(folders) > 1 else os.path.dirname(folders[0])
    runs = {}
    for folder in dict.fromkeys(folders):
        label = re.sub(r"(^|/)version_\d+$", "", os.path.relpath(folder, common)) or os.path.basename(folder)
        runs[label] = folder
    return runs


def read_scalars(folder: str) -> Series:
    """Every scalar tag of a run folder as sorted (step, value) pairs; a later event wins a step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    series: Series = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        series[tag] = sorted(by_step.items())
    for tag, parts in DERIVED.items():
        if tag not in series and all(p in series for p in parts):
            steps = dict(series[parts[0]])
            other = dict(series[parts[1]])
            series[tag] = [(s, v + other[s]) for s, v in sorted(steps.items()) if s in other]
    return series


def png_name(tag: str) -> str:
    """The file ``plot`` draws ``tag`` into."""
    return tag.replace("/", "_").replace("@", "_at_") + ".png"


def save_figure(fig, out: str | Path, name: str) -> Path:
    """Lay out, write ``<out>/<name>`` and close a matplotlib figure (every study figure ends so)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(out) / name
    os.makedirs(out, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(runs: dict[str, Series], tags: list[str], out: str) -> list[str]:
    """One PNG per tag that any run has; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    written = []
    for tag in tags:
        present = {label: s[tag] for label, s in runs.items() if s.get(tag)}
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in present.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(tag)
        ax.set_title(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(str(save_figure(fig, out, png_name(tag))))
    return written


def main(argv: list[str] | None = None) -> list[str]:
    parser = command_parser("psft plot", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or globs (quote globs)")
    parser.add_argument("--tags", nargs="+", default=DEFAULT_TAGS, help=f"default: {' '.join(DEFAULT_TAGS)}")
    parser.add_argument("--out", default="plots")
    args = parser.parse_args(argv)
    runs = {label: read_scalars(folder) for label, folder in find_runs(args.runs).items()}
    written = plot(runs, args.tags, args.out)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
