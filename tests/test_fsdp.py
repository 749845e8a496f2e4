"""FSDP2 through Lightning on CPU (gloo): 2 processes equal 1 process, sharded twins, sharded resume.

One 2-process job (tests/fsdp_job.py, started like torchrun would) runs every distributed case; the
1-process runs it is compared with train in this process, on the same data and global batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fsdp_job import PSFT_VARIANTS, RESUME_AT, launch, run, write_data
from loss_record import RECORD

from psft_lightning.cli import run_cli
from psft_lightning.strategies import FSDP2Strategy

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PAPER_CONFIGS = [
    "configs/paper/qwen2.5-7b-instruct_psft.yaml",
    "configs/paper/llama-3.1-8b-instruct_psft.yaml",
]
TOLERANCE = 1e-5  # fp32; measured differences are ~5e-7
LOSS_RUNS = (
    "ce",
    "kl",
    "asft",
    "gift",
    "ce_accumulate",
    "ce_checkpointing",
    "ce_bf16",
    *PSFT_VARIANTS,
    *(f"{name}_resumed" for name in PSFT_VARIANTS),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_data(tmp_path_factory.mktemp("fsdp_data") / "train.jsonl")


@pytest.fixture(scope="module")
def two_process(data, tmp_path_factory) -> dict:
    """Results of the 2-process FSDP2 job (both ranks started here, as torchrun would)."""
    out = tmp_path_factory.mktemp("fsdp_job")
    try:
        results = launch(data, out)
    except RuntimeError as err:
        pytest.fail(str(err))
    results["tokenised"] = [json.loads((out / f"tokenised_rank{r}.json").read_text()) for r in range(2)]
    for name in (*LOSS_RUNS, "psft_bf16_mixed"):  # JSON keys are strings; steps are ints
        results[name] = {
            kind: {int(step): loss for step, loss in losses.items()} for kind, losses in results[name].items()
        }
    return results


def test_two_process_losses_are_the_recorded_ones(two_process):
    """Bit-identical to the record written before the redesign (``tests/loss_record.py``)."""
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))["fsdp_2_process"]
    assert sorted(recorded) == sorted(LOSS_RUNS)
    for name in LOSS_RUNS:
        for kind in ("train", "val"):
            got = {str(step): loss for step, loss in two_process[name][kind].items()}
            assert got == recorded[name][kind], (name, kind)


@pytest.mark.parametrize("name", ["ce", "kl", "asft", "gift", *PSFT_VARIANTS])
def test_two_processes_match_one_process(name, data, two_process, tmp_path):
    objective = name.split("_")[0]
    one, two = run(objective, data, 1, tmp_path, **PSFT_VARIANTS.get(name, {})), two_process[name]
    assert sorted(two["train"]) == sorted(one["train"]) == list(range(len(one["train"])))
    assert len(one["train"]) >= 5 and len(one["val"]) >= 1
    for kind in ("train", "grad_norm", "val"):
        assert sorted(two[kind]) == sorted(one[kind])
        for step, loss in one[kind].items():
            assert abs(two[kind][step] - loss) <= TOLERANCE, (kind, step, two[kind][step], loss)
    if name == "psft":  # the refresh steps (ratio 1: loss -1) and the clipped steps in between
        train = one["train"]
        assert [train[s] for s in (0, 2, 4)] == [-1.0, -1.0, -1.0]
        assert all(train[s] < -1.0 for s in (1, 3, 5))


def test_the_data_is_tokenised_once_for_both_ranks(two_process):
    """Rank 0's prepare_data builds the one cache entry (the file serves training and validation);
    rank 1, and every later run of the job, maps it."""
    rank0, rank1 = two_process["tokenised"]
    assert len(rank0) == 1 and rank1 == []


def test_accumulation_checkpointing_and_bf16_compute(two_process):
    fp32 = two_process["ce"]["train"]
    for variant in ("ce_accumulate", "ce_checkpointing"):  # 2 ranks x 2 micro-batches of 1; recompute
        assert sorted(two_process[variant]["train"]) == sorted(fp32)
        for step, loss in two_process[variant]["train"].items():
            assert abs(loss - fp32[step]) <= TOLERANCE, (variant, step)
    bf16 = two_process["ce_bf16"]["train"]
    diffs = [abs(bf16[s] - fp32[s]) for s in fp32]
    assert 0 < max(diffs) < 0.05, diffs  # really computed in bf16, and still close


def test_psft_under_bf16_mixed_autocast(two_process):
    """Trainer precision bf16-mixed over FSDP2: the policy and the sharded pi_old twin run under autocast."""
    fp32, bf16 = two_process["psft"]["train"], two_process["psft_bf16_mixed"]["train"]
    assert sorted(bf16) == sorted(fp32)
    diffs = [abs(bf16[s] - fp32[s]) for s in fp32]
    assert 0 < max(diffs) < 0.05, diffs


def test_twins_are_sharded_and_refresh_is_local(two_process):
    probe = two_process["probe"]
    for name in ("old_policy", "callback_snapshot"):
        assert probe[f"{name}_all_dtensor"]
        assert 0.49 < probe[f"{name}_local_fraction"] < 0.51  # each rank holds half
    assert probe["snapshot_is_module_old_policy"]
    assert probe["refresh_collectives"] == 0
    assert probe["snapshot_forward_collectives"] > 0  # the counter does see FSDP's all-gathers


@pytest.mark.parametrize("name", PSFT_VARIANTS)
def test_sharded_checkpoint_resume_is_exact(name, two_process):
    assert two_process[f"{name}_checkpoint_is_sharded"]
    straight, resumed = two_process[name], two_process[f"{name}_resumed"]
    assert sorted(resumed["train"]) == list(range(RESUME_AT, len(straight["train"])))
    assert all(resumed["train"][s] == straight["train"][s] for s in resumed["train"]), (resumed, straight)
    last = len(straight["train"])  # the validation after the last step, on restored weights
    assert resumed["val"][last] == straight["val"][last]


@pytest.mark.parametrize("config", ["configs/psft_fsdp.yaml", *PAPER_CONFIGS])
def test_multi_gpu_configs_parse_and_build_without_gpus(config, capsys, tmp_path, monkeypatch):
    """Every key is checked by the CLI parser, and the run is built (on CPU, no weights are loaded)."""
    path = str(REPO / config)
    with pytest.raises(SystemExit) as done:
        run_cli(["fit", "--config", path, "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer, model, data = printed["trainer"], printed["model"], printed["data"]
    assert trainer["strategy"]["class_path"] == "psft_lightning.strategies.FSDP2Strategy"
    assert (model["fsdp_param_dtype"], model["fsdp_reduce_dtype"]) == ("bf16", "fp32")
    assert model["gradient_checkpointing"] and trainer["precision"] == "32-true"
    assert model["objective"]["init_args"]["clip_low"] == 0.2
    assert model["objective"]["init_args"]["clip_high"] == 0.28
    if config in PAPER_CONFIGS:  # the paper's recipe: 8 per optimizer step, 8 steps per snapshot
        (old_policy,) = [c for c in trainer["callbacks"] if c["class_path"].endswith(".OldPolicy")]
        per_step = (
            data["batch_size"]
            * trainer["devices"]
            * trainer["num_nodes"]
            * trainer["accumulate_grad_batches"]
        )
        assert per_step == 8 and per_step * old_policy["init_args"]["refresh_every_n_steps"] == 64
        assert (model["lr"], model["weight_decay"], trainer["gradient_clip_val"]) == (1e-6, 0.1, 1.0)
        assert model["warmup_steps"] > 0
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", path, "--trainer.accelerator=cpu", "--trainer.devices=2"], run=False)
    assert isinstance(cli.trainer.strategy, FSDP2Strategy)
    assert cli.model.policy is None and cli.model.hparams.model == model["model"]


def test_psft_refuses_lightning_fsdp1_strategy():
    """FSDPStrategy keeps parameters sharded outside the training step, where pi_old runs."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from psft_lightning.errors import ConfigError
    from psft_lightning.module import PSFTModule

    module = PSFTModule(model="tiny", objective="psft")
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(), callbacks=[])
    with pytest.raises(ConfigError, match="FSDP2Strategy"):
        module.configure_model()
    assert module.policy is None
