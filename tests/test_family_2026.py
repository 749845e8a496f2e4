"""deft (arXiv 2602.11424), trsft (TRAPO, arXiv 2512.17636) and eksft (arXiv 2605.29303): the pure functions
by hand (value and gradient), the vocabulary-level ones through the module's chunked path against the same
math on the full logits, DEFT's gate against a naive full-logits computation, and its peak memory against
the chunked KL's."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from test_family_objectives import assert_step_matches
from test_ops import objective_problem

from psft_lightning.errors import ConfigError
from psft_lightning.objectives import (
    DEFT,
    EKSFT,
    TrSFT,
    build_objective,
    deft_gate,
    deft_loss,
    eksft_loss,
    eksft_selection,
    trsft_loss,
)
from psft_lightning.ops import chunked_vocab_values

P = [0.5, 0.25, 0.1, 0.8]


def logprobs_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs], requires_grad=True)


# ------------------------------------------------------------------------------------------ DEFT
def test_deft_loss_by_hand():
    logprobs, gate = logprobs_of(P), torch.tensor([0.3, 0.6, 0.9, 0.2], requires_grad=True)
    loss, metrics = deft_loss(logprobs, gate, torch.ones(4), num_tokens=8)
    hand = sum(-(p**a - 1) / a for p, a in zip(P, [0.3, 0.6, 0.9, 0.2], strict=True)) / 8
    assert loss.item() == pytest.approx(hand, abs=1e-7)
    assert metrics["deft/gate_mean"].item() == pytest.approx(2.0 / 8, abs=1e-7)
    assert metrics["train/nll"].item() == pytest.approx(-sum(map(math.log, P)) / 8, abs=1e-7)
    loss.backward()
    # d/d log p of -(p^a - 1)/a is -p^a: NLL's gradient scaled by p^a
    want = [-(p**a) / 8 for p, a in zip(P, [0.3, 0.6, 0.9, 0.2], strict=True)]
    assert torch.allclose(logprobs.grad, torch.tensor(want), atol=1e-7)
    assert gate.grad is None  # stop-gradient


def test_deft_gate_is_the_collision_probability():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, -1e9]])
    # uniform over 4: 4 * (1/4)^2; [3, 1, 1, 0] / 5: (9 + 1 + 1) / 25
    assert torch.allclose(deft_gate(logits, None, None), torch.tensor([0.25, 11 / 25]), atol=1e-7)


def test_deft_gate_chunked_matches_naive_full_logits_to_1e5():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = (torch.randn(1000, 16, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, 1000, (37,), generator=g)
    naive = torch.softmax(hidden.detach() @ weight.detach().t(), -1).pow(2).sum(-1)
    for chunk in (1, 5, 37, None):
        chunked = chunked_vocab_values(deft_gate, hidden, weight, targets, chunk_size=chunk)
        assert chunked.dtype == torch.float32 and torch.allclose(chunked, naive, atol=1e-5, rtol=0), chunk
    assert naive.max().item() > 2 * naive.min().item()  # gates that really differ per token


# ----------------------------------------------------------------------------------------- TrSFT
def test_trsft_loss_by_hand():
    logprobs = logprobs_of(P)
    loss, metrics = trsft_loss(logprobs, torch.ones(4), prob_floor=0.3, num_tokens=8)
    # p >= 0.3: -p/p = -1; below: -p/0.3
    assert loss.item() == pytest.approx((-1 - 0.25 / 0.3 - 0.1 / 0.3 - 1) / 8, abs=1e-7)
    assert metrics["trsft/bounded_frac"].item() == pytest.approx(2 / 8, abs=1e-7)
    loss.backward()
    # CE's gradient above the floor, (p / c) of it below
    assert torch.allclose(
        logprobs.grad, torch.tensor([-1 / 8, -0.25 / 0.3 / 8, -0.1 / 0.3 / 8, -1 / 8]), atol=1e-7
    )
    floor_one, _ = trsft_loss(logprobs_of(P), torch.ones(4), prob_floor=1.0)
    assert floor_one.item() == pytest.approx(-sum(P) / 4, abs=1e-7)  # c = 1: the -p objective


@pytest.mark.parametrize("floor", [0.0, -0.1, 1.5])
def test_trsft_refuses_a_floor_that_is_not_a_probability(floor):
    with pytest.raises(ConfigError, match=rf"trsft prob_floor must be in \(0, 1\].*got {floor}"):
        TrSFT(prob_floor=floor)


# ----------------------------------------------------------------------------------------- EKSFT
# token 5 is masked out: the highest entropy and KL of all, and still never selected
PROBS = [0.5, 0.25, 0.1, 0.8, 0.4, 0.9]
ENTROPY = [0.9, 0.1, 0.5, 0.3, 0.7, 5.0]
KL = [0.05, 0.4, 0.3, 0.01, 0.5, 5.0]
MASK = torch.tensor([1, 1, 1, 1, 1, 0])


def eksft_case(combine: str, **kwargs):
    logprobs = logprobs_of(PROBS)
    entropy = torch.tensor(ENTROPY, requires_grad=True)
    kl = torch.tensor(KL, requires_grad=True)
    loss, metrics = eksft_loss(logprobs, entropy, kl, MASK, combine=combine, num_tokens=10, **kwargs)
    loss.backward()
    return loss.item(), metrics, logprobs.grad, entropy.grad, kl.grad


def test_eksft_selection_by_hand():
    # 5 loss tokens, ratio 0.4: k = 2; E = {0, 4} (entropy 0.9, 0.7), K = {4, 1} (KL 0.5, 0.4)
    removed, by_entropy, by_kl = eksft_selection(torch.tensor(ENTROPY), torch.tensor(KL), MASK, 0.4, "union")
    assert by_entropy.tolist() == [True, False, False, False, True, False]
    assert by_kl.tolist() == [False, True, False, False, True, False]
    assert removed.tolist() == [True, True, False, False, True, False]
    inter, *_ = eksft_selection(torch.tensor(ENTROPY), torch.tensor(KL), MASK, 0.4, "intersection")
    assert inter.tolist() == [False, False, False, False, True, False]
    none, e, k = eksft_selection(torch.tensor(ENTROPY), torch.tensor(KL), MASK, 0.3, "union")  # int(1.5) = 1
    assert none.tolist() == [True, False, False, False, True, False] and e.sum() == k.sum() == 1


def test_eksft_loss_union_by_hand():
    value, metrics, g_logp, g_h, g_kl = eksft_case(
        "union", top_k_ratio=0.4, entropy_weight=0.2, kl_weight=0.3
    )
    share = 5 / 10  # the micro-batch's 5 tokens of the step's 10
    ce = share * -(math.log(0.1) + math.log(0.8)) / 2  # kept: tokens 2 and 3
    h, kl = share * (0.9 + 0.7) / 2, share * (0.4 + 0.5) / 2
    assert value == pytest.approx(ce - 0.2 * h + 0.3 * kl, abs=1e-6)
    assert metrics["eksft/removed_frac"].item() == pytest.approx(3 / 10, abs=1e-7)
    assert metrics["eksft/entropy"].item() == pytest.approx(h, abs=1e-7)
    assert metrics["eksft/kl"].item() == pytest.approx(kl, abs=1e-7)
    assert metrics["train/nll"].item() == pytest.approx(-sum(map(math.log, PROBS[:5])) / 10, abs=1e-6)
    assert torch.allclose(g_logp, torch.tensor([0, 0, -0.25, -0.25, 0, 0.0]), atol=1e-7)
    assert torch.allclose(g_h, torch.tensor([-0.05, 0, 0, 0, -0.05, 0]), atol=1e-7)  # -0.2 * share / 2
    assert torch.allclose(g_kl, torch.tensor([0, 0.075, 0, 0, 0.075, 0]), atol=1e-7)  # 0.3 * share / 2


def test_eksft_loss_intersection_and_k_zero_by_hand():
    value, metrics, g_logp, *_ = eksft_case(
        "intersection", top_k_ratio=0.4, entropy_weight=0.0, kl_weight=0.0
    )
    assert value == pytest.approx(0.5 * -sum(math.log(p) for p in PROBS[:4]) / 4, abs=1e-6)  # token 4 out
    assert metrics["eksft/removed_frac"].item() == pytest.approx(1 / 10, abs=1e-7)
    assert torch.allclose(g_logp, torch.tensor([-0.125] * 4 + [0, 0.0]), atol=1e-7)
    value, metrics, g_logp, g_h, g_kl = eksft_case("union", top_k_ratio=0.1)  # k = int(0.5) = 0: plain CE
    assert value == pytest.approx(-sum(math.log(p) for p in PROBS[:5]) / 10, abs=1e-6)
    assert metrics["eksft/removed_frac"].item() == 0.0 and metrics["eksft/kl"].item() == 0.0
    assert torch.allclose(g_h, torch.zeros(6)) and torch.allclose(g_kl, torch.zeros(6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k_ratio": 1.0}, r"eksft top_k_ratio must be in \[0, 1\)"),
        ({"top_k_ratio": -0.1}, r"eksft top_k_ratio must be in \[0, 1\)"),
        ({"combine": "both"}, "eksft combine must be union or intersection, got 'both'"),
        ({"entropy_weight": -1.0}, "eksft entropy_weight must be >= 0, got -1.0"),
        ({"kl_weight": -0.5}, "eksft kl_weight must be >= 0, got -0.5"),
    ],
)
def test_eksft_refuses_settings_by_meaning(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EKSFT(**kwargs)


# ------------------------------------------------------------------ through the module (tiny model)
def naive_loss(module, batch, objective: str):
    """The objective's math on the full [tokens, vocab] logits of the policy (and the reference)."""
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logits = module.policy(**inputs, use_cache=False).logits[:, :-1][mask].float()
    logp = torch.log_softmax(logits, -1)
    logprobs = logp.gather(1, targets[mask][:, None]).squeeze(1)
    n = float(mask.sum())
    ones = torch.ones(int(n), dtype=torch.bool)
    if objective == "deft":
        gate = torch.softmax(logits.detach(), -1).pow(2).sum(-1)
        return gate, deft_loss(logprobs, gate, ones, num_tokens=n)
    with torch.no_grad():
        ref = torch.log_softmax(module.reference(**inputs, use_cache=False).logits[:, :-1][mask].float(), -1)
    kl = (logp.exp() * (logp - ref)).sum(-1)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])
    o = module.objective
    return entropy, eksft_loss(
        logprobs, entropy, kl, ones, o.top_k_ratio, o.combine, o.entropy_weight, o.kl_weight, num_tokens=n
    )


@pytest.mark.parametrize("objective", ["deft", "eksft"])
def test_vocab_objective_through_the_module_matches_full_logits(objective):
    module, batch, _ = objective_problem(objective)
    if objective == "eksft":  # weights large enough that both terms show in the gradient
        module.objective = EKSFT(top_k_ratio=0.25, entropy_weight=0.5, kl_weight=2.0)
    want_vocab, (want, want_metrics) = naive_loss(module, batch, objective)
    want.backward()
    want_grads = [p.grad.clone() for p in module.policy.parameters()]
    module.policy.zero_grad()

    needs = module.objective.needs()
    assert needs.reference == (objective == "eksft") and (module.reference is not None) == needs.reference
    stats = module.token_stats(module.policy, batch, module.reference if needs.reference else None, needs)
    assert torch.allclose(stats.vocab.detach(), want_vocab.detach(), atol=1e-5, rtol=0)  # the gate/entropy
    assert_step_matches(module, stats, needs, want, want_metrics, want_grads)


def test_defaults_and_registration():
    assert isinstance(build_objective("deft"), DEFT) and build_objective("trsft").prob_floor == 0.1
    eksft = build_objective("eksft")  # MINE-USTC/EKSFT README and examples/example_eksft/eksft.sh
    assert (eksft.top_k_ratio, eksft.combine, eksft.entropy_weight, eksft.kl_weight) == (
        0.2,
        "union",
        0.05,
        0.05,
    )
    assert eksft.needs().ref_kl == "reverse" and eksft.needs().reference
    assert (
        build_objective("deft").needs().vocab_fn is deft_gate
        and not build_objective("deft").needs().reference
    )
    assert build_objective("trsft").needs() == build_objective("ce").needs()
    for name, tag in (
        ("deft", "deft/gate_mean"),
        ("trsft", "trsft/bounded_frac"),
        ("eksft", "eksft/removed_frac"),
    ):
        assert any(tag in tags for tags in build_objective(name).dashboard_charts().values()), name


# ------------------------------------------------------------------------------- DEFT's peak memory
MEMORY_CASE = """
import json, resource, sys, torch
from psft_lightning.objectives import deft_loss
from psft_lightning.ops import chunked_token_stats, chunked_vocab_values
from psft_lightning.objectives.deft import deft_gate
torch.manual_seed(0)
V, N, H = 152064, 440, 64
hidden = torch.randn(N, H, requires_grad=True)
weight = (torch.randn(V, H) * 0.02).requires_grad_()
ref_hidden, ref_weight = torch.randn(N, H), torch.randn(V, H) * 0.02  # held by both: the same baseline
targets = torch.randint(0, V, (N,))
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
before = rss()
if sys.argv[1] == "kl":  # the kl objective's head: log-probs and the exact KL, chunked
    stats = chunked_token_stats(hidden, weight, targets, ref_hidden, ref_weight)
    loss = (-stats.logprobs + 0.1 * stats.ref_kl).mean()
else:  # deft's: log-probs, and the gate through the vocabulary-function path (as step/stats.py runs it)
    stats = chunked_token_stats(hidden, weight, targets)
    gate = chunked_vocab_values(deft_gate, hidden, weight, targets)
    loss, _ = deft_loss(stats.logprobs, gate, torch.ones(N))
loss.backward()
print(json.dumps({"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def peak_mb(case: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CASE, case], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def test_deft_peak_memory_is_no_more_than_the_chunked_kl():
    """A 152k vocabulary, 440 tokens (two auto-sized chunks): full fp32 logits would be 268 MB, one chunk
    is 134 MB. Each case in its own process, peak RSS above the inputs."""
    kl, deft = peak_mb("kl"), peak_mb("deft")
    assert deft <= kl, (deft, kl)
    assert kl > 150  # the measurement sees the chunks at all (at least one [chunk, V] buffer beyond)
