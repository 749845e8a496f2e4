"""DFT, ASFT and KL's forward direction: the pure functions by hand (value and gradient), the objectives'
declarations, and DFT against TRL's own ``loss_type="dft"`` on the same model and batch."""

from __future__ import annotations

import math

import pytest
import torch

from psft_lightning.errors import ConfigError
from psft_lightning.objectives import (
    ASFT,
    DFT,
    KL,
    Needs,
    ObjectiveInputs,
    asft_loss,
    build_objective,
    dft_loss,
)

MASK = [[1, 1, 1], [1, 0, 0]]
PROBS = [[0.5, 0.25, 0.1], [0.8, 0.3, 0.9]]  # the second row's last two are masked out
VALID = [0.5, 0.25, 0.1, 0.8]


def logprobs_leaf():
    return torch.tensor([[math.log(p) for p in row] for row in PROBS], requires_grad=True)


def test_dft_loss_value_gradient_and_metrics_by_hand():
    logprobs = logprobs_leaf()
    loss, metrics = dft_loss(logprobs, torch.tensor(MASK))
    assert loss.item() == pytest.approx(-sum(p * math.log(p) for p in VALID) / 4, abs=1e-7)
    assert loss.item() == pytest.approx(0.2754801, abs=1e-6)
    assert metrics["dft/weight_mean"].item() == pytest.approx(sum(VALID) / 4, abs=1e-7)
    assert metrics["train/nll"].item() == pytest.approx(-sum(math.log(p) for p in VALID) / 4, abs=1e-6)
    loss.backward()
    # d/d log p of -sg(p) log p is -p: the weight, not differentiated
    want = torch.tensor([[-0.5 / 4, -0.25 / 4, -0.1 / 4], [-0.8 / 4, 0, 0]])
    assert torch.allclose(logprobs.grad, want, atol=1e-7, rtol=0)


def test_dft_loss_divides_by_the_steps_token_count():
    logprobs = logprobs_leaf()
    loss, _ = dft_loss(logprobs, torch.tensor(MASK), num_tokens=10)
    assert loss.item() == pytest.approx(-sum(p * math.log(p) for p in VALID) / 10, abs=1e-7)
    loss.backward()
    assert logprobs.grad[0, 0].item() == pytest.approx(-0.05, abs=1e-7)


def test_asft_loss_is_dft_plus_lambda_forward_kl_by_hand():
    logprobs = logprobs_leaf()
    kl = torch.tensor([[0.2, 0.0, 0.6], [0.4, 9.0, 9.0]], requires_grad=True)
    loss, metrics = asft_loss(logprobs, kl, torch.tensor(MASK), kl_weight=0.5)
    dft = -sum(p * math.log(p) for p in VALID) / 4
    assert loss.item() == pytest.approx(dft + 0.5 * 1.2 / 4, abs=1e-7)
    assert metrics["asft/kl"].item() == pytest.approx(0.3, abs=1e-7)
    assert metrics["dft/weight_mean"].item() == pytest.approx(sum(VALID) / 4, abs=1e-7)
    loss.backward()
    assert torch.allclose(kl.grad, torch.tensor([[0.125] * 3, [0.125, 0, 0]]), atol=1e-7, rtol=0)
    assert logprobs.grad[1, 0].item() == pytest.approx(-0.2, abs=1e-7)


def test_objectives_declare_their_needs_and_defaults():
    assert build_objective("dft").needs() == Needs() and isinstance(build_objective("dft"), DFT)
    asft = build_objective("asft")
    assert isinstance(asft, ASFT) and asft.kl_weight == 0.1  # zhuchichi56/ASFT train.py default
    assert asft.needs() == Needs(ref_kl="forward")
    assert KL().needs() == Needs(ref_kl="reverse") and KL(direction="forward").needs() == Needs(
        ref_kl="forward"
    )
    assert DFT().dashboard_charts() == {"DFT": ["dft/weight_mean", "train/nll"]}
    assert "asft/kl" in ASFT().dashboard_charts()["ASFT"]
    with pytest.raises(ConfigError, match="kl_weight"):
        ASFT(kl_weight=-1.0)
    with pytest.raises(ConfigError, match="direction"):
        KL(direction="both")
    with pytest.raises(ValueError, match="ref_kl"):
        ASFT()(ObjectiveInputs(torch.zeros(2), torch.ones(2)))


def test_objective_call_matches_the_pure_function():
    logprobs = torch.log(torch.tensor([0.5, 0.25, 0.1]))
    inputs = ObjectiveInputs(logprobs, torch.ones(3), num_tokens=6, ref_kl=torch.tensor([0.1, 0.2, 0.3]))
    assert DFT()(inputs).loss.item() == pytest.approx(dft_loss(logprobs, torch.ones(3), 6)[0].item(), abs=0)
    got = ASFT(kl_weight=2.0)(inputs)
    assert got.loss.item() == pytest.approx(
        dft_loss(logprobs, torch.ones(3), 6)[0].item() + 2.0 * 0.1, abs=1e-7
    )


def test_dft_matches_trl_sft_trainer_dft_loss_value_and_gradient(tmp_path):
    pytest.importorskip("trl", reason="TRL comes with the dev extra")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from psft_lightning.models import load_model, load_tokenizer

    model = load_model("tiny", None)
    ids = torch.randint(0, 256, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 9:] = -100
    args = SFTConfig(output_dir=str(tmp_path), loss_type="dft", report_to=[], use_cpu=True, max_length=None)
    data = Dataset.from_dict({"input_ids": [ids[0].tolist()]})
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer("tiny"))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    theirs = trainer.compute_loss(trainer.model, batch)
    theirs.backward()
    their_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
    ours, _ = dft_loss(logp.gather(2, targets.clamp(min=0)[..., None]).squeeze(-1), mask)
    ours.backward()
    assert int(mask.sum()) == 8 + 5
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6) and ours.item() > 1e-3
    for (name, p), want in zip(model.named_parameters(), their_grads, strict=True):
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-5), name
