"""Entropy as the paper measures it: the teacher-forced token entropy of the training responses at
every optimizer step (``train/entropy``: the step's response-token mean of the policy's entropy on its
own training batch, before the update), over epochs, beside the probe's entropy on fixed dev answers
(``eval/entropy``); SFT's sawtooth, if any, sits at the epoch boundaries."""

from __future__ import annotations

from pathlib import Path

from psft_lightning.study.budgets import LABELS
from psft_lightning.study.plots import read_scalars, save_figure

ENTROPY_PNG = "entropy_over_epochs.png"
PANELS = {"train": "training responses (train/entropy, every step)", "probe": "probe (eval/entropy)"}


def entropy_curves(folder: Path) -> dict[str, list[list[float]]]:
    """A run's logged ``train/entropy`` and ``eval/entropy`` as [step, value] pairs (steps count the
    optimizer steps done, the logged one included)."""
    scalars = read_scalars(str(folder))
    return {
        "train": [[step, value] for step, value in scalars.get("train/entropy", [])],
        "probe": [[step, value] for step, value in scalars.get("eval/entropy", [])],
    }


def boundaries(run: dict) -> list[int]:
    """The optimizer steps at which each epoch of ``run`` ended."""
    return [checkpoint["step"] for checkpoint in run["checkpoints"]]


def plot_entropy(record: dict, out: Path, objectives: tuple[str, ...] = ("ce", "psft")) -> Path | None:
    """Two panels, each objective's runs at every seed (its selected lr): the training responses'
    entropy per step and the probe's, the base model at step 0, epoch ends as dotted lines."""
    runs = [
        (name, run) for name in objectives for run in record["chosen"].get(name, []) if run.get("entropy")
    ]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colours = dict(zip(objectives, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    base = record["base"]["metrics"].get("eval/entropy")
    for ax, (panel, title) in zip(axes, PANELS.items(), strict=True):
        for name, run in runs:
            points = run["entropy"][panel]
            if panel == "probe" and base is not None:
                points = [[0, base], *points]
            if points:
                steps, values = zip(*points, strict=True)
                style = "-" if run["seed"] == record["chosen"][name][0]["seed"] else "--"
                label = f"{LABELS[name]} seed {run['seed']}"
                ax.plot(steps, values, style, color=colours[name], marker=".", markersize=3, label=label)
        for step in boundaries(runs[0][1])[:-1]:
            ax.axvline(step + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("optimizer step (dotted: end of an epoch)")
        ax.set_ylabel("mean token entropy (nats)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, ENTROPY_PNG)
