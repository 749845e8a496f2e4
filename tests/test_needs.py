"""The one declaration of needs: its validation, the built-ins' declarations, what the step computes
from it, and a clear error for plugins written against the retired capability flags."""

from __future__ import annotations

import pytest
import torch

from psft_lightning.objectives import CE, KL, PSFT, Needs, Objective, PSFTWarmup
from psft_lightning.ops import TokenStats
from psft_lightning.step import objective_inputs


def test_builtin_declarations():
    assert CE().needs() == Needs()
    assert KL().needs() == Needs(ref_kl="reverse")
    assert PSFT().needs() == Needs(old_policy_from=0)
    assert PSFTWarmup(warmup_steps=4).needs() == Needs(old_policy_from=4)


def test_derived_flags():
    assert not Needs().reference and not Needs().old_policy
    assert Needs(ref_kl="forward").reference
    assert Needs(vocab_fn=lambda z, r, y: z[:, 0], vocab_ref=True).reference
    assert not Needs(vocab_fn=lambda z, r, y: z[:, 0]).reference
    warm = Needs(old_policy_from=2)
    assert warm.old_policy and [warm.old_logprobs_at(s) for s in range(4)] == [False, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ref_kl": "both"}, "ref_kl"),
        ({"vocab_ref": True}, "vocab_fn"),
        ({"old_policy_from": -1}, "old_policy_from"),
    ],
)
def test_invalid_declarations_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Needs(**kwargs)


@pytest.mark.parametrize("flag", ["needs_reference", "uses_old_policy"])
def test_a_plugin_with_a_retired_flag_is_told_to_declare_needs(flag):
    with pytest.raises(TypeError, match=r"override needs\(\)"):
        type("OldStylePlugin", (Objective,), {flag: True})


def test_objective_inputs_carry_only_what_is_declared():
    stats = TokenStats(
        logprobs=torch.tensor([-1.0, -2.0]),
        entropy=torch.tensor([0.5, 0.7]),
        correct=torch.tensor([True, False]),
        ref_kl=torch.tensor([0.1, 0.2]),
        vocab=torch.tensor([3.0, 4.0]),
    )
    bare = objective_inputs(stats, Needs(), step=5, num_tokens=8.0)
    assert bare.entropy is None and bare.old_logprobs is None and bare.step == 5 and bare.num_tokens == 8.0
    full = objective_inputs(stats, Needs(entropy=True, old_policy_from=0), 5, 8.0, None)  # refresh step
    assert torch.equal(full.entropy, stats.entropy) and torch.equal(full.old_logprobs, stats.logprobs)
    served = objective_inputs(stats, Needs(old_policy_from=0), 1, 2, torch.tensor([-3.0, -4.0]))
    assert served.old_logprobs.tolist() == [-3.0, -4.0]
    early = objective_inputs(stats, Needs(old_policy_from=6), 5, 8.0, torch.tensor([-3.0, -4.0]))
    assert early.old_logprobs is None  # before warm-up


def test_a_step_that_needs_pi_old_without_one_fails():
    from psft_lightning.models import tiny_model
    from psft_lightning.objectives import PSFT
    from psft_lightning.step.train import train_micro_batch

    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]])}
    with pytest.raises(RuntimeError, match="no OldPolicy callback holds pi_old"):
        train_micro_batch(PSFT(), tiny_model(), None, None, batch, step=5, steps_scale=1, batch_idx=0)
