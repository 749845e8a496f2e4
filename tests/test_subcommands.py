"""Every subcommand beside fit/validate is registered in one table and parsed in one style: each takes
``--config FILE`` and ``--print_config``."""

from __future__ import annotations

import pytest
import yaml

from psft_lightning.cli import COMMANDS, SUBCOMMANDS, main

VALID = {  # arguments each subcommand accepts, with what --print_config must echo
    "export": (["ckpt", "out"], {"checkpoint": "ckpt", "out_dir": "out", "overwrite": False}),
    "objectives": ([], {}),
    "study": (["--budget", "test", "--runs-dir", "r"], {"budget": "test", "runs_dir": "r"}),
    "plot": (["a", "b", "--out", "p"], {"runs": ["a", "b"], "out": "p"}),
    "grpo": (["--model", "m", "--train-file", "t", "--out", "o", "--steps", "3"], {"steps": 3}),
    "dpo": (["--model", "m", "--train-file", "t", "--out", "o", "--no-use-chat-template"], {}),
    "eval": (["m", "--tasks", "psft", "--batch-size", "4"], {"model": "m", "tasks": "psft", "batch_size": 4}),
}


def test_the_table_is_the_whole_list():
    assert sorted(SUBCOMMANDS) == sorted(VALID)
    assert list(COMMANDS) == ["fit", "validate", *SUBCOMMANDS]


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_subcommand_prints_its_config(name, capsys):
    args, expected = VALID[name]
    with pytest.raises(SystemExit) as stop:
        main([name, *args, "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out) or {}
    assert {key: printed[key] for key in expected} == expected


def test_a_subcommand_reads_its_arguments_from_a_config_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config = tmp_path / "plot.yaml"
    config.write_text(yaml.safe_dump({"runs": [str(tmp_path / "empty")], "out": str(tmp_path / "p")}))
    with pytest.raises(SystemExit) as stop:
        main(["plot", "--config", str(config)])
    assert stop.value.code == 2
    assert (
        f"no TensorBoard event files (events.out.tfevents.*) under {tmp_path / 'empty'}"
        in capsys.readouterr().err
    )
