"""The padding-free layout (``data.packing: padding_free``): one row per micro-batch, position ids
restarting per example, no attention mask. Its log-probs equal the padded batch's under sdpa and
flex_attention on CPU (transformers builds a block-diagonal mask from the position ids), examples never
attend across each other, the loss normalisation is the padded run's, and flash-attention is allowed
with it and only with it."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from conftest import StepLosses
from test_packing import PAD, make_examples, tiny_module
from tiny_run import arithmetic_data, tiny_fit_args

from psft_lightning.callbacks import OldPolicy
from psft_lightning.cli import run_cli
from psft_lightning.data.batching import StepBatches, StepShape
from psft_lightning.data.collate import collate, collate_padding_free
from psft_lightning.data.datamodule import PSFTDataModule
from psft_lightning.data.formats import IGNORE_INDEX, Example
from psft_lightning.errors import ConfigError
from psft_lightning.models import PACKING_ATTENTION, check_packed_attention, tiny_model
from psft_lightning.module import PSFTModule

LENGTHS = [37, 5, 60, 22, 18, 41, 9, 64]


def logprobs(module: PSFTModule, batch: dict) -> torch.Tensor:
    """Per-token log-probs without grad: flex_attention has no backward on CPU (torch 2.13)."""
    with torch.no_grad():
        return module.token_stats(module.policy, batch).logprobs


def test_padding_free_layout_by_hand():
    a = Example([10, 11, 12], [IGNORE_INDEX, 11, 12])
    b = Example([20, 21], [IGNORE_INDEX, 21])
    c = Example([30, 31, 32, 33], [IGNORE_INDEX, IGNORE_INDEX, 32, 33])
    batch = collate_padding_free([a, b, c], PAD)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 30, 31, 32, 33]]  # input order, no PAD
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21, -100, -100, 32, 33]]
    assert "attention_mask" not in batch
    assert batch["num_input_tokens"].item() == 9


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_padding_free_logprobs_equal_the_padded_batch(attn):
    module = tiny_module(attn)
    examples = make_examples(LENGTHS)
    flat = collate_padding_free(examples, PAD)
    assert flat["input_ids"].shape == (1, sum(LENGTHS))
    got = logprobs(module, flat)
    want = logprobs(module, collate(examples, PAD))  # one example per row, padded
    assert got.numel() == want.numel() == sum(e.num_loss_tokens for e in examples)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_padding_free_examples_never_attend_across(attn):
    """Changing one example's tokens moves its own log-probs and nobody else's (the same row shape as
    above, so flex_attention's compiled kernel is reused)."""
    module = tiny_module(attn)
    examples = make_examples(LENGTHS)
    edited = list(examples)
    edited[3] = make_examples([LENGTHS[3]], seed=1)[0]  # the fourth example replaced, same length
    base = logprobs(module, collate_padding_free(examples, PAD))
    moved = logprobs(module, collate_padding_free(edited, PAD))
    start = sum(e.num_loss_tokens for e in examples[:3])
    others = torch.ones_like(base, dtype=torch.bool)
    others[start : start + examples[3].num_loss_tokens] = False
    assert torch.allclose(base[others], moved[others], atol=1e-6, rtol=0)  # the later ones look past it
    assert (base[~others] - moved[~others]).abs().max().item() > 1e-2  # and the edit was real


def test_padding_free_needs_its_position_ids():
    """The checks above are not vacuous: the same row without position ids attends across examples."""
    module = tiny_module("sdpa")
    flat = collate_padding_free(make_examples([20, 30]), PAD)
    leaky = {k: v for k, v in flat.items() if k != "position_ids"}
    diff = logprobs(module, flat) - logprobs(module, leaky)
    assert diff.abs().max().item() > 1e-3


def test_padding_free_loader_keeps_the_step_counts_and_one_row():
    examples = make_examples([3 + (7 * i) % 40 for i in range(40)])
    shape = StepShape(micro_batch_size=4, accumulate=2)
    flat = list(StepBatches(examples, shape, PAD, seed=2, packing="padding_free"))
    padded = list(StepBatches(examples, shape, PAD, seed=2))
    assert len(flat) == len(padded) == 10
    for got, want in zip(flat, padded, strict=True):
        assert got["input_ids"].shape[0] == 1 and PAD not in got["input_ids"]  # one row, no padding
        assert got["num_input_tokens"] == got["input_ids"].numel() == want["num_input_tokens"]
        assert got["step_loss_tokens"] == want["step_loss_tokens"]
        assert (got["labels"] != IGNORE_INDEX).sum() == (want["labels"] != IGNORE_INDEX).sum()


def fit_losses(files, tmp_path, packing) -> StepLosses:
    train, val = files
    data = arithmetic_data(train, val, batch_size=2, packing=packing)
    module = PSFTModule(model="tiny", objective="psft", lr=3e-3, schedule="constant")
    losses = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        accumulate_grad_batches=2,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[OldPolicy(refresh_every_n_steps=2), losses],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return losses


def test_padding_free_fit_has_the_padded_losses(arithmetic_files, tmp_path):
    """PSFT with pi_old and accumulation: each step's token-mean loss is the padded run's."""
    flat = fit_losses(arithmetic_files, tmp_path, "padding_free")
    padded = fit_losses(arithmetic_files, tmp_path, False)
    assert sorted(flat.losses) == sorted(padded.losses) == [0, 1, 2]
    for step, loss in padded.losses.items():
        assert flat.losses[step] == pytest.approx(loss, abs=1e-5), step
    assert flat.val_losses == pytest.approx(padded.val_losses, abs=1e-6)


def test_cli_selects_padding_free(arithmetic_files, tmp_path):
    cli = run_cli(["fit", *tiny_fit_args(tmp_path, arithmetic_files, 1, "--data.packing=padding_free")])
    assert cli.datamodule.packing == "padding_free" and cli.trainer.global_step == 1
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["input_ids"].shape == (1, batch["num_input_tokens"].item())  # one row, no padding


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3", *PACKING_ATTENTION])
def test_padding_free_allows_flash_attention(attn):
    model = tiny_model()
    model.config._attn_implementation = attn  # flash-attn is not installed on CPU: set the name only
    check_packed_attention(model, "padding_free")


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3"])
def test_packed_rows_with_flash_attention_point_to_padding_free(attn):
    model = tiny_model()
    model.config._attn_implementation = attn
    with pytest.raises(ConfigError, match=rf"'{attn}'.*one row.*data.packing: padding_free"):
        check_packed_attention(model, True)


def test_padding_free_refuses_attention_without_per_example_masks():
    model = tiny_model()
    model.config._attn_implementation = "paged|eager"
    with pytest.raises(ConfigError, match=re.escape("data.packing: padding_free is on but")):
        check_packed_attention(model, "padding_free")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"packing": "padding_free", "pack_length": 1024}, "pack_length.*data.packing: true"),
        ({"packing": "padding-free"}, "data.packing must be true, false or padding_free, got 'padding-free'"),
    ],
)
def test_wrong_padding_free_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        PSFTDataModule(["x.jsonl"], max_length=128, **options)
