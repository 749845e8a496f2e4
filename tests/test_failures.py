"""A sharded run asked for on a machine without the backend it needs: one clear error, before any
process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from psft_lightning.cli import main

TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message on a machine without GPUs"
)
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("fsdp", "The strategy `fsdp` requires a GPU accelerator"),
        (
            "{class_path: psft_lightning.strategies.FSDP2Strategy, init_args: {process_group_backend: nccl}}",
            "asks for process_group_backend 'nccl', which needs CUDA GPUs",
        ),
    ],
)
def test_fsdp_without_its_backend_is_a_clear_error(strategy, expected, arithmetic_files, tmp_path, capsys):
    train, val = arithmetic_files
    args = [
        "fit",
        f"--config={TINY_YAML}",
        f"--data.train_files=[{train}]",
        f"--data.val_files=[{val}]",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.strategy={strategy}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("psft: error:") and expected in err
    assert "FSDP2Strategy, which runs FSDP2 over gloo" in err
    assert not (tmp_path / "run").exists()
