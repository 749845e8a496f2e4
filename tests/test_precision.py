"""The default precision: bf16-mixed where the hardware has bf16 units, fp32 elsewhere, one log line
saying which and why; a precision the user sets is kept."""

from __future__ import annotations

import logging

import pytest
from tiny_run import tiny_fit_args

from psft_lightning import precision
from psft_lightning.cli import run_cli


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert precision.cpu_bf16_flags(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert precision.cpu_bf16_flags(info) == []


@pytest.mark.parametrize(
    ("flags", "expected", "reason"),
    [
        (["amx_bf16"], "bf16-mixed", "this CPU has bf16 matrix units (amx_bf16)"),
        ([], "32-true", "this CPU has no bf16 matrix units"),
    ],
)
def test_auto_precision_on_cpu(monkeypatch, flags, expected, reason):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    chosen, why = precision.auto_precision("cpu")
    assert chosen == expected and why.startswith(reason)


def fit_precision(tmp_path, files, *extra: str) -> str:
    """The precision plugin's name after a 1-step ``psft fit`` on tiny.yaml with ``extra`` arguments."""
    cli = run_cli(["fit", *tiny_fit_args(tmp_path, files, 1, "--data.max_length=192", *extra)])
    return str(cli.trainer.precision)


@pytest.mark.parametrize(("flags", "expected"), [(["avx512_bf16"], "bf16-mixed"), ([], "32-true")])
def test_unset_precision_is_chosen_with_one_log_line(
    tmp_path, arithmetic_files, monkeypatch, caplog, flags, expected
):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    with caplog.at_level(logging.INFO, logger="psft_lightning.fit"):
        assert fit_precision(tmp_path, arithmetic_files, "--trainer.precision=null") == expected
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith(f"precision: {expected} (")


def test_a_set_precision_is_kept(tmp_path, arithmetic_files, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    with caplog.at_level(logging.INFO, logger="psft_lightning.fit"):
        assert fit_precision(tmp_path, arithmetic_files) == "32-true"  # tiny.yaml sets 32-true
    assert not [r for r in caplog.records if r.getMessage().startswith("precision:")]
