"""Diagnostics: the clipped-token table in TensorBoard (only on its steps), train/nll for any objective,
and ``psft objectives``."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import scalars
from tiny_run import tiny_fit_args

from psft_lightning.callbacks import ClippedTokens
from psft_lightning.callbacks.clipped_tokens import TAG, markdown_table
from psft_lightning.cli import run_cli
from psft_lightning.errors import ConfigError

TESTS = Path(__file__).resolve().parent


def cli_args(tmp_path, files, *extra: str) -> list[str]:
    return tiny_fit_args(tmp_path, files, 4, "--trainer.num_sanity_val_steps=0", *extra)


class Spy(ClippedTokens):
    """Records how many clipped tokens the table read, per micro-batch it read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_at: list[int] = []

    def _add(self, batch, clipped, ratio) -> None:
        self.read_at.append(int(clipped.sum()))
        super()._add(batch, clipped, ratio)


def test_clipped_token_table_is_logged_every_n_steps_and_nowhere_else(tmp_path, arithmetic_files):
    # lr 0.05: the policy moves fast, so tokens pass 1 + clip_high between snapshots (refresh every 2)
    cli = run_cli(cli_args(tmp_path, arithmetic_files, "--model.lr=0.05"), run=False)
    spy = Spy(log_clipped_every_n_steps=2, top_k=5)
    cli.trainer.callbacks.append(spy)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert sorted(spy.tables) == [2, 4]
    assert len(spy.read_at) == 2  # one micro-batch per step, read on steps 2 and 4 only
    logged = scalars(tmp_path)["psft/clip_frac_high"]
    assert logged[2] > 0 and logged[4] > 0  # steps 2 and 4 use a snapshot taken one step earlier
    for step in (2, 4):
        table = spy.tables[step]
        assert 0 < len(table) <= 5 and sum(n for _, n, _ in table) <= spy.read_at[step // 2 - 1]
        assert all(ratio > 1.28 for _, _, ratio in table)  # clipped: above 1 + clip_high
        assert [n for _, n, _ in table] == sorted((n for _, n, _ in table), reverse=True)
        assert all(text.startswith("'") for text, _, _ in table)  # decoded token strings
    (event_file,) = glob.glob(f"{tmp_path}/tiny/version_0/events.out.tfevents.*")
    acc = EventAccumulator(event_file, size_guidance={"tensors": 0})
    acc.Reload()
    (tag,) = [t for t in acc.Tags()["tensors"] if t.startswith(TAG)]
    events = acc.Tensors(tag)
    assert [e.step for e in events] == [2, 4]
    text = events[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| token | clipped | mean ratio |") and text.count("\n") == len(spy.tables[2]) + 1


def test_markdown_table_and_validation():
    assert (
        markdown_table([("'wait'", 3, 1.5)])
        == "| token | clipped | mean ratio |\n|---|---|---|\n| `'wait'` | 3 | 1.500 |"
    )
    assert markdown_table([]) == "no token was clipped in this step"
    with pytest.raises(ConfigError, match="log_clipped_every_n_steps"):
        ClippedTokens(log_clipped_every_n_steps=0)


def test_train_nll_is_logged_for_an_objective_that_does_not_report_it(
    tmp_path, arithmetic_files, monkeypatch, clean_registry
):
    monkeypatch.syspath_prepend(str(TESTS / "plugins"))
    args = cli_args(tmp_path, arithmetic_files, "--model.objective=psft_focal.FocalNLL")
    run_cli(["fit", *args])
    logged = scalars(tmp_path)
    assert sorted(logged["train/nll"]) == [1, 2, 3, 4] and sorted(logged["focal/weight"]) == [1, 2, 3, 4]
    assert logged["train/nll"][1] > logged["train/loss"][1] > 0  # focal weights < 1 shrink the loss


def test_psft_objectives_lists_builtin_and_entry_point_objectives(
    tmp_path, monkeypatch, capsys, clean_registry
):
    from psft_lightning.cli import main
    from psft_lightning.objectives import ENTRY_POINT_GROUP

    info = tmp_path / "psft_focal_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: psft-focal-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nfocal = psft_focal:FocalNLL\nstrict_focal = psft_focal:StrictFocalNLL\n"
    )
    monkeypatch.syspath_prepend(str(TESTS / "plugins"))
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["objectives"])
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    builtin = [
        "asft",
        "ce",
        "deft",
        "dft",
        "eaft",
        "eksft",
        "gift",
        "kl",
        "prob",
        "psft",
        "psft_warmup",
        "trsft",
    ]
    assert names == sorted([*builtin, "focal", "strict_focal"])
    block = out[out.index("kl  (") :].split("\n")[:4]
    assert block == [
        "kl  (psft_lightning.objectives.kl.KL)",
        "    loss = NLL + beta * token-mean of the full-vocabulary KL to pi_ref.",
        "    hyper-parameters: beta=0.1, direction='reverse'",
        "    needs: reverse KL to the initial model",
    ]
    assert "focal  (psft_focal.FocalNLL)\n    Focal-weighted NLL" in out and "gamma=2.0" in out
    assert "strict_focal  (psft_focal.StrictFocalNLL)" in out and "gamma=required" in out
    assert "needs: vocabulary function with reference logits" in out  # gift
    assert "needs: old policy from step 10" in out  # psft_warmup
    eksft = out[out.index("eksft  (") :].split("\n")[:4]
    assert eksft[2:] == [
        "    hyper-parameters: top_k_ratio=0.2, combine='union', entropy_weight=0.05, kl_weight=0.05",
        "    needs: reverse KL to the initial model, vocabulary function",
    ]
    assert "trsft  (psft_lightning.objectives.trsft.TrSFT)" in out and "prob_floor=0.1" in out
