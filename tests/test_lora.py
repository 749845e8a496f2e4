"""LoRA through peft: PSFT trains the adapters only, the old policy is a snapshot of the adapters
(ratio exactly 1 right after a refresh), the KL reference is the base model with adapters off, and
the merged (or adapter-only) export reproduces the trained module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from tiny_run import train_tiny
from transformers import AutoModelForCausalLM

from psft_lightning.data.collate import collate
from psft_lightning.errors import ConfigError
from psft_lightning.export import export_checkpoint
from psft_lightning.lora import AdapterSnapshot, LoraSettings, adapters_disabled
from psft_lightning.models import load_model
from psft_lightning.module import PSFTModule

LORA = LoraSettings(r=4, alpha=8.0)
IDS = torch.tensor([[60, 61, 62, 10, 256, 70, 80, 90, 100, 33]])


@torch.no_grad()
def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


@torch.no_grad()
def nll(model, batch: dict) -> float:
    """Token-mean NLL of the batch's loss tokens, by plain cross-entropy over full logits."""
    out = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(F.cross_entropy(out[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100))


def lora_module(objective: str = "psft") -> PSFTModule:
    module = PSFTModule(model="tiny", objective=objective, lora=LORA)
    module.configure_model()
    return module


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_psft_lora_trains_the_adapters_only_and_lowers_the_loss(tmp_path, arithmetic_files, precision):
    module, _ = train_tiny(
        tmp_path / "run", arithmetic_files, steps=8, precision=precision, objective="psft", lr=2e-2, lora=LORA
    )
    data = module.trainer.datamodule
    batch = collate(data.train_examples[:8], data.tokenizer.pad_token_id)
    base = load_model("tiny")

    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimized = sum(p.numel() for group in module.trainer.optimizers[0].param_groups for p in group["params"])
    assert optimized == sum(module.policy.get_parameter(n).numel() for n in trainable) == 3584
    initial = base.state_dict()
    for name, value in module.policy.state_dict().items():
        if ".lora_" in name:
            continue
        assert torch.equal(value, initial[name.replace(".base_layer", "")]), name
    assert all(module.policy.get_parameter(n).abs().sum() > 0 for n in trainable if ".lora_B." in n)
    assert nll(module.policy, batch) < nll(base, batch) - 0.1


def test_lora_old_policy_is_an_adapter_snapshot_with_ratio_one_on_refresh():
    module = lora_module()
    module.policy.train()
    old = module.make_old_policy("snapshot")
    assert isinstance(old.model, AdapterSnapshot)
    assert set(old.model.state_dict()) == {n for n, p in module.policy.named_parameters() if p.requires_grad}
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": IDS}

    def update_adapters(delta: float) -> None:  # stands in for an optimizer step
        with torch.no_grad():
            for param in module.policy.parameters():
                if param.requires_grad:
                    param.add_(delta * torch.randn_like(param))

    update_adapters(0.1)
    old.refresh(4, coming=lambda: ())
    with torch.no_grad():
        current = module.token_stats(module.policy.eval(), batch).logprobs
    module.policy.train()
    assert old.logprobs(batch, step=4) is None  # the refresh step: pi_old is the policy itself
    served = old.logprobs(batch, step=5)
    assert torch.equal(served, current)  # ratio exactly 1 after a refresh

    update_adapters(0.1)
    live = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    assert torch.equal(old.logprobs(batch, step=5), served)  # pi_old stays frozen
    assert module.policy.training  # the swap gives back the train mode ...
    for name, param in module.policy.named_parameters():  # ... and the live adapter weights
        if param.requires_grad:
            assert torch.equal(param, live[name])
    with torch.no_grad():
        moved = module.token_stats(module.policy.eval(), batch).logprobs
    assert (moved - served).abs().max() > 1e-4


def test_lora_kl_reference_is_the_base_model_with_adapters_disabled():
    module = lora_module("kl")
    assert module.reference is None and module.reference_model() is module.policy
    base = load_model("tiny")
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": IDS}
    with torch.no_grad():
        for name, param in module.policy.named_parameters():
            if ".lora_B." in name:
                param.add_(0.2 * torch.randn_like(param))
    module.policy.train()
    with adapters_disabled(module.policy) as reference:
        assert (logits(reference) - logits(base)).abs().max() < 1e-6
    assert module.policy.training
    assert (logits(module.policy) - logits(base)).abs().max() > 1e-3  # adapters are on again

    stats = module.token_stats(module.policy, batch, module.reference_model())
    ref = F.log_softmax(logits(base)[0, :-1], -1)
    pol = F.log_softmax(logits(module.policy)[0, :-1], -1)
    hand_kl = (pol.exp() * (pol - ref)).sum(-1)  # KL(pi || pi_ref) per position
    assert torch.allclose(stats.ref_kl, hand_kl, atol=1e-5)


def test_lora_merged_and_adapter_only_exports_match_the_module(tmp_path, arithmetic_files):
    module, ckpt = train_tiny(
        tmp_path / "run", arithmetic_files, steps=3, objective="psft", lr=2e-2, lora=LORA
    )
    trained = logits(module.policy)
    assert (trained - logits(load_model("tiny"))).abs().max() > 1e-3

    merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpt, tmp_path / "merged"))
    assert not any("lora" in name for name in merged.state_dict())
    assert (logits(merged) - trained).abs().max() < 1e-5

    adapter_dir = export_checkpoint(ckpt, tmp_path / "adapter", adapter_only=True)
    assert (adapter_dir / "adapter_config.json").is_file() and not (
        adapter_dir / "model.safetensors"
    ).exists()
    with_adapter = PeftModel.from_pretrained(load_model("tiny"), adapter_dir)
    assert (logits(with_adapter) - trained).abs().max() < 1e-5


def test_lora_settings_are_checked():
    with pytest.raises(ConfigError, match="r must be >= 1"):
        LoraSettings(r=0)
    with pytest.raises(ConfigError, match="LM head"):
        PSFTModule(
            model="tiny", objective="ce", lora=LoraSettings(target_modules=["q_proj", "lm_head"])
        ).configure_model()
