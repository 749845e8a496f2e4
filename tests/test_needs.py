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
    assert bare.mask.tolist() == [True, True]  # the step's tokens are the loss positions: all count
    full = objective_inputs(stats, Needs(entropy=True, old_policy_from=0), 5, 8.0, torch.tensor([-3.0, -4.0]))
    assert torch.equal(full.entropy, stats.entropy) and full.old_logprobs.tolist() == [-3.0, -4.0]


class CountingOld:
    """pi_old that records what the step asked and answers a fixed tensor."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def serve(self, batch, step: int):
        self.asked.append(step)
        return lambda own: torch.full_like(own, -3.0)


@pytest.mark.parametrize(("step", "asked"), [(5, []), (6, [6]), (7, [7])])
def test_the_step_asks_pi_old_from_old_policy_from_on(step, asked):
    from psft_lightning.models import tiny_model
    from psft_lightning.objectives import PSFTWarmup
    from psft_lightning.step.train import train_micro_batch

    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]])}
    old = CountingOld()
    torch.manual_seed(0)
    result = train_micro_batch(PSFTWarmup(warmup_steps=6), tiny_model(), None, old, batch, step, 1, 0)
    assert old.asked == asked
    assert ("psft/ratio" in result.output.tokens) == bool(asked)


def test_pi_old_answers_the_policys_own_logprobs_on_its_refresh_step():
    from torch import nn

    from psft_lightning.policies import LookaheadOldPolicy

    old = LookaheadOldPolicy(nn.Linear(1, 1), lambda model, batch: torch.zeros(0))
    old.refresh(4, coming=lambda: ())
    own = torch.tensor([-1.0, -2.0], requires_grad=True)
    served = old.serve({"labels": torch.tensor([[-100, 1, 2]])}, 4)(own)
    assert served.tolist() == [-1.0, -2.0] and not served.requires_grad


def test_a_step_that_needs_pi_old_without_one_fails():
    from psft_lightning.models import tiny_model
    from psft_lightning.objectives import PSFT
    from psft_lightning.step.train import train_micro_batch

    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]])}
    with pytest.raises(RuntimeError, match="no OldPolicy callback holds pi_old"):
        train_micro_batch(PSFT(), tiny_model(), None, None, batch, step=5, steps_scale=1, batch_idx=0)
