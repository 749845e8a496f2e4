"""PSFTModule on the tiny model: exact step token-mean under accumulation, the reference and the old
policy, and the metrics a run writes to TensorBoard."""

from __future__ import annotations

import glob
import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from psft_lightning.callbacks import OldPolicy
from psft_lightning.data import PSFTDataModule
from psft_lightning.errors import DataError
from psft_lightning.models import load_model
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import PSFTWarmup
from psft_lightning.policies.twins import REFERENCE_PREFIX

# four examples of very unequal length (plain prompt + completion + EOS)
ROWS = [
    {"prompt": "ab", "completion": "c"},
    {"prompt": "what is 2+2?", "completion": "it is four, of course; four."},
    {"prompt": "hi", "completion": "hello"},
    {"prompt": "x", "completion": "a much longer answer than any other in this tiny set!"},
]
TRAIN_TAGS = {
    "train/loss",
    "train/entropy",
    "train/token_accuracy",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_sec",
    "val/loss",
    "val/token_accuracy",
}
PSFT_TAGS = {
    "psft/clip_frac_high",
    "psft/clip_frac_low",
    "psft/ratio_mean",
    "psft/ratio_max",
    "psft/approx_kl",
}


class GradCapture(L.Callback):
    """Records the policy's gradients right before each optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.policy.named_parameters()})


def run(
    tmp_path,
    objective,
    *,
    batch_size=4,
    accumulate=1,
    max_steps=1,
    callbacks=(),
    tb=False,
    lr=1e-3,
    val=False,
    checkpoint=False,
) -> tuple[L.Trainer, PSFTModule]:
    """Fit the tiny model on the four unequal ROWS (plain prompt + completion, no chat template)."""
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    data = PSFTDataModule(
        [str(train)],
        val_files=[str(train)] if val else None,
        tokenizer="tiny",
        use_chat_template=False,
        max_length=64,
        batch_size=batch_size,
        val_fraction=0.0,
    )
    module = PSFTModule("tiny", objective, lr=lr, schedule="constant")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=TensorBoardLogger(str(tmp_path), name="tb") if tb else False,
        log_every_n_steps=1,
        enable_checkpointing=checkpoint,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val else 0,
        val_check_interval=max_steps if val else None,
        check_val_every_n_epoch=None if val else 1,
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    return trainer, module


def hand_grads(tokenizer, rows, sequence_mean: bool = False) -> dict[str, torch.Tensor]:
    """Gradient of the CE summed over every loss token of every example, divided by the token count
    (or, with ``sequence_mean``, the mean of per-example means): one example at a time through a
    fresh tiny model, no padding, no Lightning."""
    model = load_model("tiny")
    losses, counts = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        completion.append(tokenizer.eos_token_id)
        ids = torch.tensor([prompt + completion])
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
        losses.append(F.cross_entropy(logits.float(), ids[0, len(prompt) :], reduction="sum"))
        counts.append(len(completion))
    if sequence_mean:
        loss = sum(total / n for total, n in zip(losses, counts, strict=True)) / len(rows)
    else:
        loss = sum(losses) / sum(counts)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(("batch_size", "accumulate"), [(4, 1), (2, 2), (1, 4)])
def test_accumulated_step_gradient_is_the_token_mean_of_the_whole_step(
    tmp_path, tokenizer, batch_size, accumulate
):
    capture = GradCapture()
    run(tmp_path, "ce", batch_size=batch_size, accumulate=accumulate, callbacks=[capture])
    assert len(capture.grads) == 1
    expected = hand_grads(tokenizer, ROWS)
    got = capture.grads[0]
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-7), name
    # the lengths are unequal enough that a mean of per-example means is far outside the tolerance
    other = hand_grads(tokenizer, ROWS, sequence_mean=True)
    assert not torch.allclose(
        got["model.embed_tokens.weight"], other["model.embed_tokens.weight"], rtol=1e-2, atol=1e-5
    )


def test_psft_refresh_step_gradient_equals_ce(tmp_path, tokenizer):
    capture = GradCapture()
    run(tmp_path, "psft", batch_size=2, accumulate=2, callbacks=[capture])
    for name, grad in hand_grads(tokenizer, ROWS).items():
        # at ratio 1, d(-r)/d(theta) = -d(log pi)/d(theta): PSFT's first step is a CE step
        assert torch.allclose(capture.grads[0][name], grad, rtol=1e-4, atol=1e-7), name


def test_batch_without_loss_tokens_is_a_data_error_not_nan():
    module = PSFTModule("tiny", "ce")
    module.configure_model()
    module.trainer = SimpleNamespace(accumulate_grad_batches=1, world_size=1, global_step=0)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.full((1, 3), -100),
        "step_loss_tokens": torch.tensor(0.0),
    }
    with pytest.raises(DataError, match="training batch 3 has no loss tokens"):
        module.training_step(batch, 3)


def scalars(log_dir) -> dict[str, dict[int, float]]:
    """Scalars keyed by ``global_step``: that of the step a training value was computed at (the logged
    x-axis counts optimizer steps completed, one more), and that at which validation ran."""
    (event_file,) = glob.glob(f"{log_dir}/events.out.tfevents.*")
    acc = EventAccumulator(event_file, size_guidance={"scalars": 0})
    acc.Reload()
    shift = {tag: 0 if tag.startswith("val/") else 1 for tag in acc.Tags()["scalars"]}
    return {tag: {e.step - shift[tag]: e.value for e in acc.Scalars(tag)} for tag in shift}


def test_kl_reference_is_not_checkpointed_and_ref_kl_starts_at_zero(tmp_path):
    trainer, module = run(tmp_path, "kl", max_steps=2, tb=True, val=True, checkpoint=True, lr=1e-2)
    assert module.reference is not None
    assert not any(k.startswith(REFERENCE_PREFIX) for k in module.state_dict())
    (ckpt,) = glob.glob(f"{tmp_path}/tb/version_0/checkpoints/*.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and all(k.startswith("policy.") for k in state)
    # the reference keeps the initial weights; loading a checkpoint leaves it untouched
    initial = load_model("tiny").state_dict()
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, initial[key]), key
    module.load_state_dict(state)
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, initial[key]), key

    metrics = scalars(trainer.logger.log_dir)
    assert TRAIN_TAGS | {"kl/ref_kl", "train/nll"} <= metrics.keys()
    assert not PSFT_TAGS & metrics.keys()
    assert metrics["kl/ref_kl"][0] == pytest.approx(0.0, abs=1e-7)
    assert metrics["kl/ref_kl"][1] > 1e-6  # one update later the policy has moved away
    loss = metrics["train/loss"]
    assert loss[0] == pytest.approx(metrics["train/nll"][0], abs=1e-6)  # beta * 0
    assert all(math.isfinite(v) for tag in metrics.values() for v in tag.values())


def test_psft_old_policy_ratio_is_one_on_refresh_steps_only_and_all_tags_logged(tmp_path):
    old = OldPolicy(refresh_every_n_steps=2)
    trainer, _ = run(tmp_path, "psft", max_steps=3, tb=True, val=True, callbacks=[old], lr=1e-2)
    metrics = scalars(trainer.logger.log_dir)
    assert TRAIN_TAGS | PSFT_TAGS | {"train/nll", "psft/refreshes"} <= metrics.keys()
    assert "kl/ref_kl" not in metrics
    ratio = metrics["psft/ratio_mean"]
    assert sorted(ratio) == [0, 1, 2]
    for step in (0, 2):  # refresh steps: the snapshot equals the policy
        assert ratio[step] == 1.0
        assert metrics["psft/ratio_max"][step] == 1.0
        assert metrics["psft/clip_frac_high"][step] == metrics["psft/clip_frac_low"][step] == 0.0
        assert metrics["psft/approx_kl"][step] == 0.0
        assert metrics["train/loss"][step] == pytest.approx(-1.0, abs=1e-6)
    assert abs(ratio[1] - 1.0) > 1e-4  # one update after the snapshot
    assert metrics["psft/approx_kl"][1] != 0.0
    assert metrics["psft/refreshes"] == {0: 1.0, 1: 1.0, 2: 2.0}
    assert old.last_refresh_step == 2 and old.refreshes == 2


def test_psft_warmup_is_ce_then_psft_with_the_snapshot_at_the_switch(tmp_path):
    old = OldPolicy(refresh_every_n_steps=8)
    trainer, _ = run(tmp_path, PSFTWarmup(warmup_steps=1), max_steps=3, tb=True, callbacks=[old], lr=1e-2)
    metrics = scalars(trainer.logger.log_dir)
    assert sorted(metrics["train/nll"]) == [0, 1, 2]
    assert metrics["train/loss"][0] == pytest.approx(metrics["train/nll"][0], abs=1e-6)  # CE loss
    assert metrics["train/loss"][0] > 0
    for tag in PSFT_TAGS:
        assert sorted(metrics[tag]) == [1, 2], tag  # no PSFT metric during the warm-up
    assert old.last_refresh_step == 1 and old.refreshes == 1
    assert metrics["psft/ratio_mean"][1] == 1.0  # the snapshot is taken at the switch step
    assert abs(metrics["psft/ratio_mean"][2] - 1.0) > 1e-4
    assert metrics["train/loss"][1] == pytest.approx(-1.0, abs=1e-6)


def perturbed(module: PSFTModule, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)


def test_old_policy_state_dict_round_trip():
    source = PSFTModule("tiny", "psft")
    source.configure_model()
    old = OldPolicy(refresh_every_n_steps=3)
    old.on_fit_start(None, source)
    perturbed(source, 1)
    old.old.refresh(5, coming=lambda: ())
    perturbed(source, 2)  # the policy moves on; the snapshot must not
    state = old.state_dict()
    assert state["last_refresh_step"] == 5 and state["refreshes"] == 1

    for restore_first in (True, False):  # checkpoint restored before or after fit start
        target = PSFTModule("tiny", "psft")
        target.configure_model()
        restored = OldPolicy(refresh_every_n_steps=3)
        if restore_first:
            restored.load_state_dict(state)
            restored.on_fit_start(None, target)
        else:
            restored.on_fit_start(None, target)
            restored.load_state_dict(state)
        assert restored.last_refresh_step == 5 and restored.refreshes == 1
        for (name, a), b in zip(
            old.old.model.state_dict().items(), restored.old.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
        assert not torch.equal(restored.old.model.lm_head.weight, source.policy.lm_head.weight)
        assert not restored.is_due(5, 0) and restored.is_due(6, 0) and not restored.is_due(7, 0)


def test_train_entropy_is_the_response_token_mean_of_the_policy_entropy_on_the_step_batch(
    tmp_path, tokenizer
):
    """What the study plots per step (the paper's training-data entropy): the policy's entropy at every
    response token of the step's batch, before the update, averaged over those tokens (not per example)."""
    trainer, _ = run(tmp_path, "ce", batch_size=2, accumulate=2, tb=True)  # one step, two micro-batches
    model = load_model("tiny")
    total, count, per_example = 0.0, 0, []
    for row in ROWS:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + completion + [tokenizer.eos_token_id]])
        with torch.no_grad():
            logp = model(ids).logits[0, len(prompt) - 1 : -1].double().log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        total, count = total + entropy.sum().item(), count + entropy.numel()
        per_example.append(entropy.mean().item())
    logged = scalars(trainer.logger.log_dir)["train/entropy"][0]  # keyed by the step it was computed at
    assert logged == pytest.approx(total / count, rel=1e-5)
    assert abs(logged - sum(per_example) / len(ROWS)) > 1e-3  # a mean of per-example means is not it
