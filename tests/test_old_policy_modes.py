"""OldPolicy modes: ``lookahead`` (no weight copy) gives the losses of ``snapshot``, also across resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_run import arithmetic_data
from torch import nn

from psft_lightning.callbacks import OldPolicy
from psft_lightning.errors import ConfigError
from psft_lightning.module import PSFTModule
from psft_lightning.policies import LookaheadOldPolicy, SnapshotOldPolicy

REFRESH = 3
STEPS = 7  # refreshes at steps 0, 3 and 6; one epoch is 6 steps (24 rows / 4 per step)


class StepLosses(L.Callback):
    """Sum of the micro-batch losses of each optimizer step, and the old log-probs each step used."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.used_old: dict[int, bool] = {}
        self.old_gap: dict[int, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        serve = pl_module.old.logprobs

        def spy(batch: dict, step: int):  # what pi_old served each step, and how far the policy moved
            old = serve(batch, step)
            self.used_old[step] = old is not None
            if old is not None:
                with torch.no_grad():
                    gap = (pl_module.token_stats(pl_module.policy, batch).logprobs - old).abs().max()
                self.old_gap[step] = gap.item()
            return old

        pl_module.old.logprobs = spy

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - (1 if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 else 0)
        self.losses[step] = self.losses.get(step, 0.0) + outputs["loss"].item()


def fit(files, mode, max_steps, tmp_path, ckpt_in=None, ckpt_out=None, packing=False, precision="32-true"):
    train, val = files
    data = arithmetic_data(train, val, batch_size=2, packing=packing)
    module = PSFTModule(model="tiny", objective="psft", lr=3e-3, schedule="constant")
    old, losses = OldPolicy(refresh_every_n_steps=REFRESH, mode=mode), StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=max_steps,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[old, losses],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_in)
    if ckpt_out:
        trainer.save_checkpoint(ckpt_out)
    return losses, old, module


def test_lookahead_gives_the_snapshot_losses_and_holds_no_weights(arithmetic_files, tmp_path):
    snap, snap_cb, _ = fit(arithmetic_files, "snapshot", STEPS, tmp_path)
    ahead, ahead_cb, module = fit(arithmetic_files, "lookahead", STEPS, tmp_path)
    assert sorted(snap.losses) == sorted(ahead.losses) == list(range(STEPS))
    for step in range(STEPS):
        assert ahead.losses[step] == pytest.approx(snap.losses[step], abs=1e-6), step
    # old log-probs were served on every step but the refresh steps, and they mattered
    assert [s for s, used in ahead.used_old.items() if not used] == [0, 3, 6]
    assert snap_cb.refreshes == ahead_cb.refreshes == 3
    assert min(ahead.old_gap[s] for s in (1, 2, 4, 5)) > 1e-4  # pi_old really lags the policy
    # no parameter copy: lookahead's pi_old holds no module, and its state holds no weights
    assert isinstance(snap_cb.old, SnapshotOldPolicy) and isinstance(snap_cb.old.model, nn.Module)
    assert isinstance(ahead_cb.old, LookaheadOldPolicy) and not hasattr(ahead_cb.old, "model")
    state = ahead_cb.state_dict()
    assert state["weights"] is None
    n_params = sum(p.numel() for p in module.policy.parameters())
    assert sum(t.numel() for t in state["cache"].values()) < n_params / 10
    # the refresh at step 6 cached steps 7 and 8 (2 micro-batches each) for a longer resumed run
    assert sorted(state["cache"]) == [(7, 0), (7, 1), (8, 0), (8, 1)]


def test_lookahead_runs_in_the_steps_precision_under_bf16(arithmetic_files, tmp_path):
    """The lookahead's forward runs in a callback, outside the training step: it must still be bf16-mixed,
    or pi_old's fp32 log-probs would meet the policy's bf16 ones in the ratio."""
    snap, _, _ = fit(arithmetic_files, "snapshot", 4, tmp_path, precision="bf16-mixed")
    ahead, _, _ = fit(arithmetic_files, "lookahead", 4, tmp_path, precision="bf16-mixed")
    fp32, _, _ = fit(arithmetic_files, "snapshot", 4, tmp_path)
    for step in range(4):
        assert ahead.losses[step] == pytest.approx(snap.losses[step], abs=1e-6), step
    assert max(abs(snap.losses[s] - fp32.losses[s]) for s in range(4)) > 1e-5  # bf16 really ran


def test_lookahead_resume_is_exact(arithmetic_files, tmp_path):
    whole, _, _ = fit(arithmetic_files, "lookahead", STEPS, tmp_path, packing=True)
    ckpt = str(tmp_path / "mid.ckpt")
    first, _, _ = fit(arithmetic_files, "lookahead", 4, tmp_path, ckpt_out=ckpt, packing=True)
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state
    second, _, _ = fit(arithmetic_files, "lookahead", STEPS, tmp_path, ckpt_in=ckpt, packing=True)
    assert sorted(second.losses) == [4, 5, 6]
    for step in range(STEPS):
        got = first.losses[step] if step < 4 else second.losses[step]
        assert got == pytest.approx(whole.losses[step], abs=1e-6), step


def test_mode_is_validated_and_must_match_on_resume():
    with pytest.raises(ConfigError, match="snapshot or lookahead"):
        OldPolicy(mode="copy")
    callback = OldPolicy(mode="lookahead")
    callback.old = LookaheadOldPolicy(nn.Linear(1, 1), lambda model, batch: torch.zeros(0))
    assert callback.active
    with pytest.raises(ConfigError, match="resume with the same mode"):
        callback.load_state_dict({"mode": "snapshot", "last_refresh_step": 0, "weights": None})
