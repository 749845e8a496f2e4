"""scripts/reproduce.py end to end on the tiny model (all four objectives, evaluation, plots, results
page) and scripts/plot_runs.py on its event files."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    reproduce = load_script("reproduce")
    page = reproduce.main(
        [
            "--budget",
            "test",
            "--model",
            "tiny",
            "--out",
            str(out / "results.md"),
            "--runs-dir",
            str(out / "runs"),
        ]
    )
    return out, page.read_text(encoding="utf-8")


def table_row(page: str, label: str) -> list[str]:
    row = next(line for line in page.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")][1:]


def test_reproduce_trains_all_four_objectives_and_writes_the_page_and_plots(reproduced):
    out, page = reproduced
    for label in ("base model", "SFT", "SFT-KL", "PSFT", "PSFT (warm-up)"):
        cells = table_row(page, label)
        assert len(cells) == 9 and all(re.fullmatch(r"-?\d+\.\d{3}", c) for c in cells), cells
    verdicts = re.findall(r"^\| \((\d)\) .* \| (yes|no|inconclusive) \|", page, re.MULTILINE)
    assert [n for n, _ in verdicts] == ["1", "2", "3", "4"]  # one computed verdict per claim
    assert verdicts[1][1] == "inconclusive"  # the tiny model's accuracy sits at the floor
    assert "arxiv.org/abs/2508.17784" in page
    clipped = page[page.index("## Which tokens PSFT clips") : page.index("## Plots")]
    for label in ("PSFT", "PSFT (warm-up)"):
        assert re.search(rf"^{re.escape(label)}, step \d+:$", clipped, re.MULTILINE), label
    assert clipped.count("| token | clipped | mean ratio |") + clipped.count("no token was clipped") == 2
    for name in ("eval_entropy", "train_entropy", "train_loss", "eval_accuracy", "psft_clip_frac"):
        png = out / "results" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for objective in ("ce", "kl", "psft", "psft_warmup"):
        assert (out / "runs" / "seed0" / f"{objective}.yaml").exists()


def test_the_page_shows_the_numbers_the_runs_logged(reproduced):
    out, page = reproduced
    plot_runs = load_script("plot_runs")
    runs = plot_runs.find_runs([str(out / "runs" / "seed0")])
    assert sorted(runs) == ["base", "ce", "kl", "psft", "psft_warmup"]
    psft = plot_runs.read_scalars(runs["psft"])
    entropy_column = 3
    assert table_row(page, "PSFT")[entropy_column] == f"{psft['eval/entropy'][-1][1]:.3f}"
    assert [step for step, _ in psft["eval/entropy"]] == [0, 2, 4]
    clip = dict(psft["psft/clip_frac"])
    assert clip[3] == pytest.approx(
        dict(psft["psft/clip_frac_low"])[3] + dict(psft["psft/clip_frac_high"])[3]
    )


def test_plot_runs_draws_selected_tags_of_any_run_folder(reproduced, tmp_path):
    out, _ = reproduced
    plot_runs = load_script("plot_runs")
    written = plot_runs.main(
        [str(out / "runs" / "seed0" / "*"), "--tags", "train/loss", "nope", "--out", str(tmp_path)]
    )
    assert [Path(p).name for p in written] == ["train_loss.png"]
    with pytest.raises(SystemExit, match="no TensorBoard event files"):
        plot_runs.main([str(tmp_path / "empty"), "--out", str(tmp_path)])


def test_psft_study_and_plot_are_the_library_code_behind_the_scripts(reproduced, tmp_path, capsys):
    from psft_lightning.cli import main

    out, _ = reproduced
    main(["plot", str(out / "runs" / "seed0" / "psft"), "--tags", "train/loss", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "train_loss.png")
    with pytest.raises(SystemExit) as done:
        main(["study", "--help"])
    assert done.value.code == 0 and "--budget {full,smoke,test}" in capsys.readouterr().out
    assert load_script("reproduce").main.__module__ == "reproduce"  # a wrapper: the study is in the package
    assert load_script("plot_runs").find_runs.__module__ == "psft_lightning.study.plots"


def test_psft_help_lists_every_subcommand(capsys):
    from psft_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: psft {fit,validate,export,objectives,study,plot,grpo,dpo,eval} ..."
