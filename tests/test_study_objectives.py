"""The study's objectives come from the registry, each with its shipped config, and config callbacks are
recognised by the class they build."""

from __future__ import annotations

from pathlib import Path

from psft_lightning.callbacks import ClippedTokens, OldPolicy
from psft_lightning.objectives import available_objectives
from psft_lightning.study.objectives import objective_configs, study_objectives
from psft_lightning.study.runs import builds

ROOT = Path(__file__).resolve().parent.parent


def test_every_objective_of_the_package_is_studied_the_reference_first():
    names = study_objectives()
    assert names[0] == "ce" and sorted(names) == sorted(
        ["ce", "kl", "psft", "psft_warmup", "dft", "asft", "prob", "gift", "eaft", "deft", "trsft", "eksft"]
    )
    assert set(names) <= set(available_objectives())


def test_each_objective_gets_the_config_named_after_it_else_the_only_one_selecting_it():
    configs = {name: path.name for name, path in objective_configs(ROOT).items()}
    # psft is also selected by tiny.yaml, psft_lora.yaml, psft_fsdp.yaml: the one named after it wins
    assert configs["psft"] == "psft.yaml" and configs["ce"] == "sft.yaml" and configs["kl"] == "sft_kl.yaml"
    assert list(configs) == study_objectives()


def test_a_config_callback_is_recognised_by_its_class_under_any_import_path():
    assert builds({"class_path": "psft_lightning.callbacks.OldPolicy"}, OldPolicy)
    assert builds({"class_path": "psft_lightning.callbacks.old_policy.OldPolicy"}, OldPolicy)
    assert not builds({"class_path": "psft_lightning.callbacks.ClippedTokens"}, OldPolicy)
    assert builds({"class_path": "psft_lightning.callbacks.clipped_tokens.ClippedTokens"}, ClippedTokens)
