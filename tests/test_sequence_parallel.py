"""Ulysses sequence parallelism on CPU (gloo): a group of 2 ranks, each holding half of every row, gives
the numbers of one process holding whole rows.

The multi-process runs are tests/sp_job.py (2 processes: per-token statistics, a step's loss and
gradients, the seam, a PSFT fit and its resume; 4 processes: data parallel 2 x sequence parallel 2);
the slicing itself, the masks and the errors are checked here in this process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fsdp_job import RESUME_AT, launch, run, write_data
from test_cli import scalars
from tiny_run import subprocess_env, tiny_fit_args

from psft_lightning.cli import main, run_cli
from psft_lightning.errors import ConfigError
from psft_lightning.models import check_packed_attention, tiny_model
from psft_lightning.sequence_parallel import ULYSSES, SequenceParallel, _document_mask, check_heads

TOLERANCE = 1e-5  # fp32
REPO = Path(__file__).resolve().parents[1]
QWEN_HEADS = 28  # Qwen2.5-7B's attention heads (4 KV heads); SmolLM2-135M has 9 (3 KV heads)
LONG_CONFIGS = {
    "configs/long_traces.yaml": (3, 9),
    "configs/paper/qwen2.5-7b-instruct_psft_8k.yaml": (2, QWEN_HEADS),
    "configs/paper/qwen2.5-7b-instruct_psft_32k.yaml": (4, QWEN_HEADS),
}
SP_STRATEGY = (
    "--trainer.strategy={class_path: psft_lightning.strategies.FSDP2Strategy, "
    "init_args: {sequence_parallel_size: 2}}"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_data(tmp_path_factory.mktemp("sp_data") / "train.jsonl")


@pytest.fixture(scope="module")
def two(data, tmp_path_factory) -> dict:
    """One sequence-parallel group of 2 processes."""
    return _ints(launch(data, tmp_path_factory.mktemp("sp_job"), 600, "sp_job.py", 2))


@pytest.fixture(scope="module")
def four(data, tmp_path_factory) -> dict:
    """Data parallel 2 x sequence parallel 2."""
    return _ints(launch(data, tmp_path_factory.mktemp("sp_job4"), 600, "sp_job.py", 4))


def _ints(results: dict) -> dict:
    """JSON keys of the per-step records back to ints."""
    for name, value in results.items():
        if isinstance(value, dict) and "train" in value:
            results[name] = {kind: {int(s): x for s, x in steps.items()} for kind, steps in value.items()}
    return results


def _close(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for step, value in want.items():
        assert abs(got[step] - value) <= TOLERANCE, (step, got[step], value)


def test_slices_hold_labels_shifted_before_slicing():
    """Rank 0's last position predicts rank 1's first token; rows pad to a multiple of k with -100."""
    batch = {
        "input_ids": torch.tensor([[11, 12, 13, 14, 15]]),
        "labels": torch.tensor([[-100, 12, 13, 14, 15]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1]]),
        "num_input_tokens": torch.tensor(5),
    }
    first, second = (SequenceParallel(None, 2, rank).shard(batch) for rank in (0, 1))
    assert first.input_ids.tolist() == [[11, 12, 13]] and second.input_ids.tolist() == [[14, 15, 0]]
    assert first.targets.tolist() == [[12, 13, 14]] and second.targets.tolist() == [[15, -100, -100]]
    assert first.position_ids.tolist() == [[0, 1, 2]] and second.position_ids.tolist() == [[0, 1, 2]]
    assert first.sequence_parallel.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]]
    one_example = SequenceParallel(None, 2, 0).shard(
        {k: v[:, :3] for k, v in batch.items() if k != "num_input_tokens"}
    )
    assert one_example.sequence_parallel.mask() is None  # padded to 4, still one example: causal SDPA
    assert (int(first.num_input_tokens), int(second.num_input_tokens)) == (3, 2)
    assert first.num_loss_tokens + second.num_loss_tokens == 4  # the whole row's, each once
    assert SequenceParallel(None, 2, 0).shard(first) is first  # a slice is not sliced again


def test_attention_mask_keeps_examples_apart_and_padding_out():
    assert _document_mask(torch.arange(6)[None], None).numel() == 0  # plain causal: SDPA's is_causal
    mask = _document_mask(torch.tensor([[0, 1, 2, 0, 1]]), None)[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    padded = _document_mask(torch.arange(4)[None], torch.tensor([[1, 1, 0, 0]]))[0, 0].int()
    assert padded.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]


@pytest.mark.parametrize("packing", ["padding_free", True])
def test_packing_is_allowed_with_sequence_parallel_attention(packing):
    """configs/long_traces.yaml packs padding-free under SP: the packing guard must let the Ulysses
    attention through (it keeps examples apart with the mask above), as it does sdpa."""
    model = tiny_model()
    model.config._attn_implementation = ULYSSES
    check_packed_attention(model, packing)
    model.config._attn_implementation = "flash_attention_2"  # the guard still refuses what it should
    with pytest.raises(ConfigError, match="finds packed examples from position_ids only in a batch of one"):
        check_packed_attention(model, True)


def test_head_count_not_divisible_is_a_config_error():
    model = tiny_model({"num_attention_heads": 2, "num_key_value_heads": 1})
    check_heads(model, 2)
    with pytest.raises(ConfigError, match=r"num_attention_heads=2 \(num_key_value_heads=1\).*divides 2"):
        check_heads(model, 4)


def test_sliced_forward_equals_whole_rows(two):
    """Log-probs and entropies of padded, packed and padding-free rows, 4 heads over 2 or 1 KV heads."""
    forward = two["forward"]
    assert len(forward) == 2 * 4 * 2 * 2
    for name, difference in forward.items():
        assert difference <= (0.0 if name.endswith("_beyond") else TOLERANCE), (name, difference)


@pytest.mark.parametrize("objective", ["psft", "kl", "gift"])
def test_step_loss_and_gradients_equal_one_process(two, objective):
    """PSFT against a stale pi_old (pi_old's forward sliced alike), KL to the reference, and GIFT's
    vocabulary function: the group's summed loss and gradients are the whole rows' ones."""
    step = two["step"]
    assert step[f"{objective}_loss"] <= TOLERANCE
    assert step[f"{objective}_grad"] <= TOLERANCE * step[f"{objective}_grad_scale"]


def test_token_after_the_seam_is_predicted_from_the_previous_slice(two):
    """Only the first token of the second slice is a target: rank 0 holds it, with the whole rows'
    log-prob, and it follows that token (verl #6068 dropped it)."""
    seam = two["seam"]
    for variant in ("a", "b"):
        (whole,) = seam[f"{variant}_whole"]
        (rank0,), rank1 = seam[f"{variant}_sliced"]
        assert rank1 == [] and abs(rank0 - whole) <= TOLERANCE
    assert abs(seam["a_whole"][0] - seam["b_whole"][0]) > 0.1


def test_psft_fit_with_sequence_parallel_gives_one_process_losses(two, data, tmp_path):
    one = run("psft", data, 1, tmp_path)
    for kind in ("train", "grad_norm", "val"):
        _close(two["psft"][kind], one[kind])


def test_resume_from_a_sharded_checkpoint_under_sequence_parallel(two):
    assert two["psft_checkpoint_is_sharded"]
    straight, resumed = two["psft"], two["psft_resumed"]
    assert sorted(resumed["train"]) == list(range(RESUME_AT, len(straight["train"])))
    assert all(resumed["train"][s] == straight["train"][s] for s in resumed["train"])
    last = len(straight["train"])
    assert resumed["val"][last] == straight["val"][last]


def test_data_parallel_2_by_sequence_parallel_2_equals_one_process(four, data, tmp_path):
    one = run("ce", data, 1, tmp_path)
    for kind in ("train", "grad_norm", "val"):
        _close(four["ce_dp2_sp2"][kind], one[kind])


def _psft(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "psft"), "fit", *args]  # Lightning re-runs it for rank 1
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def test_psft_fit_command_with_sequence_parallel_2(arithmetic_files, tmp_path, monkeypatch):
    """``psft fit`` on 2 CPU processes, sequence_parallel_size 2: the 1-process losses, 4 steps."""
    extra = ("--trainer.devices=2", SP_STRATEGY)
    done = _psft(tiny_fit_args(tmp_path / "sp", arithmetic_files, 4, *extra), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    try:
        main(["fit", *tiny_fit_args(tmp_path / "one", arithmetic_files, 4)])
    except SystemExit as stop:
        assert stop.code in (0, None)
    sp, single = scalars(tmp_path / "sp")["train/loss"], scalars(tmp_path / "one")["train/loss"]
    assert len(single) == 4
    _close(sp, single)


def test_head_count_not_divisible_through_the_psft_command(arithmetic_files, tmp_path):
    heads = "--model.tiny_config={num_attention_heads: 1, num_key_value_heads: 1}"
    args = tiny_fit_args(tmp_path, arithmetic_files, 1, "--trainer.devices=2", SP_STRATEGY, heads)
    done = _psft(args, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "psft: error: sequence_parallel_size 2 must divide the model's attention heads, but "
        "LlamaForCausalLM has num_attention_heads=1 (num_key_value_heads=1)"
    ) in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("config", LONG_CONFIGS)
def test_long_sequence_configs_parse_and_build(config, capsys, tmp_path, monkeypatch):
    """The mesh each needs: k divides the processes and the model's heads; the paper configs keep the
    paper's 8 examples per optimizer step."""
    k, heads = LONG_CONFIGS[config]
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer, data = printed["trainer"], printed["data"]
    assert trainer["strategy"]["init_args"]["sequence_parallel_size"] == k
    assert trainer["devices"] % k == 0 and heads % k == 0
    if "paper" in config:
        per_step = data["batch_size"] * trainer["devices"] // k * trainer["accumulate_grad_batches"]
        assert per_step == 8 and data["max_length"] in (8192, 32768)
    cli = run_cli(
        ["--config", config, "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert cli.trainer.strategy.sequence_parallel_size == k
