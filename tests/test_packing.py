"""Padding-free packing and length bucketing: exact log-probs and loss-token counts, exact resume,
and the attention implementations that would leak across packed examples are refused."""

from __future__ import annotations

import re

import pytest
import torch

from psft_lightning.data.batching import StepBatches, StepShape, plan_epoch
from psft_lightning.data.collate import best_fit_decreasing, collate, collate_packed, pack_rows
from psft_lightning.data.datamodule import PSFTDataModule
from psft_lightning.data.formats import IGNORE_INDEX, Example, Fields
from psft_lightning.errors import ConfigError
from psft_lightning.models import check_packed_attention, tiny_model
from psft_lightning.module import PSFTModule

PAD = 258


def make_examples(lengths: list[int], seed: int = 0) -> list[Example]:
    """Random token ids; the first third of each example is prompt (label -100)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(0, 256, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def tiny_module(attn: str) -> PSFTModule:
    module = PSFTModule(model="tiny", objective="ce", attn_implementation=attn)
    module.configure_model()
    return module


# ================================================================================== best-fit decreasing
def test_best_fit_decreasing_by_hand():
    # sorted: 6(a) 5(b) 4(c) 3(d) 2(e) into bins of 8: 6 -> new; 5 -> new; 4 -> new;
    # 3 fits bin b (room 3) exactly; 2 fits bin a (room 2) exactly, best fit over bin c (room 4)
    lengths = [4, 6, 2, 5, 3]
    assert best_fit_decreasing(lengths, 8) == [[1, 2], [3, 4], [0]]
    assert best_fit_decreasing([9, 1], 8) == [[0], [1]]  # too long: a bin of its own


def test_pack_rows_balances_the_bfd_row_count():
    # BFD: [5, 3], [4] -> widest row 8; balanced over 2 rows: [5], [4, 3] -> widest 7
    assert best_fit_decreasing([5, 4, 3], 8) == [[0, 2], [1]]
    assert pack_rows([5, 4, 3], 8) == [[0], [1, 2]]
    # balancing would overflow the capacity: keep BFD
    # (longest-first onto the least-filled row: [5, 4], [5, 3, 3] = 11 > 10)
    assert pack_rows([5, 5, 4, 3, 3], 10) == best_fit_decreasing([5, 5, 4, 3, 3], 10) == [[0, 1], [2, 3, 4]]


def test_collate_packed_layout_by_hand():
    a = Example([10, 11, 12], [IGNORE_INDEX, 11, 12])
    b = Example([20, 21], [IGNORE_INDEX, 21])
    c = Example([30, 31, 32, 33], [IGNORE_INDEX, IGNORE_INDEX, 32, 33])
    batch = collate_packed([a, b, c], PAD, pack_length=6)
    # BFD needs 2 rows ([c, b] and [a]: widths 6 and 3); balanced: [c] and [a, b] (widths 4 and 5)
    assert batch["input_ids"].tolist() == [[30, 31, 32, 33, PAD], [10, 11, 12, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 32, 33, -100], [-100, 11, 12, -100, 21]]
    assert "attention_mask" not in batch
    assert batch["num_input_tokens"].item() == 9


# ======================================================================================= exact log-probs
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_unpacked(attn):
    module = tiny_module(attn)
    examples = make_examples([37, 5, 60, 22, 18, 41, 9, 64])
    packed = collate_packed(examples, PAD, pack_length=64)
    assert packed["input_ids"].shape[0] < len(examples)  # really packed: fewer rows than examples
    stats = module.token_stats(module.policy, packed)
    # unpacked reference, one example at a time, re-ordered like the packed rows
    per_example = [module.token_stats(module.policy, collate([e], PAD)) for e in examples]
    order = [i for row in pack_rows([len(e.input_ids) for e in examples], 64) for i in sorted(row)]
    expected = torch.cat([per_example[i].logprobs for i in order])
    assert stats.logprobs.shape == expected.shape
    assert stats.logprobs.numel() == sum(e.num_loss_tokens for e in examples)  # exact loss tokens
    assert torch.allclose(stats.logprobs, expected, atol=1e-4, rtol=0)
    # the padded batch gives the same values too (padding and packing agree)
    padded = module.token_stats(module.policy, collate(examples, PAD))
    order_padded = torch.cat([per_example[i].logprobs for i in range(len(examples))])
    assert torch.allclose(padded.logprobs, order_padded, atol=1e-4, rtol=0)


def test_packing_leaks_without_position_ids():
    """The check above is not vacuous: without the per-example positions examples do attend across."""
    module = tiny_module("sdpa")
    examples = make_examples([20, 30])
    packed = collate_packed(examples, PAD, pack_length=64)
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    diff = (
        module.token_stats(module.policy, packed).logprobs - module.token_stats(module.policy, leaky).logprobs
    )
    assert diff.abs().max().item() > 1e-3


# ======================================================================================== refused impls
@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
def test_attention_that_honours_packing_passes(attn):
    model = tiny_model()
    model.set_attn_implementation(attn)
    check_packed_attention(model)


@pytest.mark.parametrize("attn", ["flash_attention_2", "paged|eager"])
def test_attention_that_would_leak_is_refused(attn):
    model = tiny_model()
    model.config._attn_implementation = attn  # flash-attn is not installed on CPU: set the name only
    with pytest.raises(ConfigError, match=rf"implementation '{re.escape(attn)}'.*data.packing: false"):
        check_packed_attention(model)


def test_fit_with_packing_refuses_leaking_attention(arithmetic_files):
    import lightning as L

    train, val = arithmetic_files
    module = PSFTModule(model="tiny", objective="ce", attn_implementation="paged|eager")
    fields = Fields(prompt="question", completion="answer")
    data = PSFTDataModule([train], [val], tokenizer="tiny", fields=fields, batch_size=4, packing=True)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=re.escape("'paged|eager' would let packed examples")):
        trainer.fit(module, datamodule=data)


# ============================================================================== loader: counts and resume
@pytest.mark.parametrize("options", [{"packing": True, "pack_length": 48}, {"bucketing": True}])
def test_packed_and_bucketed_loaders_keep_step_counts_and_resume(options):
    lengths = [3 + (7 * i) % 40 for i in range(40)]
    examples = make_examples(lengths)
    shape = StepShape(micro_batch_size=4, accumulate=2)
    loader = StepBatches(examples, shape, PAD, seed=2, **options)
    batches = list(loader)
    assert len(batches) == len(loader) == 10
    for step in range(5):
        micro = batches[2 * step : 2 * step + 2]
        counted = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        assert all(b["step_loss_tokens"].item() == counted for b in micro)  # exact count of the step
    resumed = list(StepBatches(examples, shape, PAD, seed=2, current_step=lambda: 3, **options))
    assert len(resumed) == 4
    for got, want in zip(resumed, batches[6:], strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    # step_micro_batches (the lookahead's view) is what the loader yields, across epochs too
    again = loader.step_micro_batches(5 + 1)  # epoch 1, step 1
    epoch1 = list(StepBatches(examples, shape, PAD, seed=2, current_step=lambda: 5, **options))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, epoch1[2:4], strict=True))


def test_bucketing_groups_similar_lengths_and_covers_the_epoch():
    lengths = [1 + (37 * i) % 97 for i in range(96)]
    shape = StepShape(micro_batch_size=4)
    plain = plan_epoch(96, shape, seed=0, epoch=0, shuffle=True)
    bucketed = plan_epoch(96, shape, seed=0, epoch=0, shuffle=True, lengths=lengths)
    assert sorted(i for s in bucketed for i in s) == list(range(96))

    def padding(steps):
        return sum(len(s) * max(lengths[i] for i in s) - sum(lengths[i] for i in s) for s in steps)

    assert padding(bucketed) < padding(plain) / 4
    assert bucketed == plan_epoch(96, shape, seed=0, epoch=0, shuffle=True, lengths=lengths)  # seeded


def test_pack_length_below_max_length_is_a_config_error():
    with pytest.raises(ConfigError, match="pack_length"):
        PSFTDataModule(["x.jsonl"], max_length=128, pack_length=64)
