"""``psft export``: checkpoints of any objective (single file or FSDP-sharded) -> a Hugging Face
directory that transformers loads with the trained logits; bad input -> a clear error, nothing
overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from tiny_run import train_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from psft_lightning.cli import main, run_cli
from psft_lightning.errors import ConfigError
from psft_lightning.export import export_checkpoint, write_model
from psft_lightning.models import CHATML_TEMPLATE, load_model, load_tokenizer, tiny_model, tiny_tokenizer
from psft_lightning.owned import record

TINY_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")

IDS = torch.tensor([[60, 61, 62, 10, 256, 70, 80, 90, 100, 33]])
MESSAGES = [{"role": "user", "content": "What is 12 + 30?"}]


@torch.no_grad()
def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


def untrained_checkpoint(path, **hparams) -> str:
    """A minimal psft-lightning checkpoint of the initial tiny model (no training needed)."""
    state = {f"policy.{k}": v for k, v in load_model("tiny").state_dict().items()}
    torch.save(
        {"hyper_parameters": {"model": "tiny", "tiny_config": None, **hparams}, "state_dict": state}, path
    )
    return str(path)


@pytest.mark.parametrize("objective", ["kl", "psft"])
def test_export_reloads_with_transformers_and_matches_the_trained_module(
    objective, tmp_path, arithmetic_files
):
    module, ckpt = train_tiny(tmp_path / "run", arithmetic_files, steps=3, objective=objective, lr=1e-2)
    out = export_checkpoint(ckpt, tmp_path / "hf")

    exported = AutoModelForCausalLM.from_pretrained(out)
    assert (logits(exported) - logits(module.policy)).abs().max() < 1e-5
    assert (logits(exported) - logits(load_model("tiny"))).abs().max() > 1e-3  # the trained weights
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    plain = set(load_model("tiny").state_dict())
    assert names <= plain and len(names) >= len(plain) - 1  # at most the tied head left out
    assert not any(n.startswith(("reference", "old_policy")) for n in names)


def test_export_writes_tokenizer_chat_template_and_generation_config(tmp_path, arithmetic_files):
    _, ckpt = train_tiny(tmp_path / "run", arithmetic_files, steps=2, objective="ce", lr=1e-2)
    out = tmp_path / "hf"
    main(["export", str(ckpt), str(out)])

    tokenizer = AutoTokenizer.from_pretrained(out)
    tiny = load_tokenizer("tiny")
    assert tokenizer.chat_template == CHATML_TEMPLATE
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == tiny.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert tokenizer(text)["input_ids"] == tiny(text)["input_ids"]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == 256
    assert generation["pad_token_id"] == tokenizer.pad_token_id == 257

    generator = pipeline("text-generation", model=str(out), tokenizer=str(out))
    result = generator(text, max_new_tokens=6, min_new_tokens=6, do_sample=False, return_full_text=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer(text, return_tensors="pt")["input_ids"]
    greedy = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert result[0]["generated_text"] == tokenizer.decode(greedy[0, prompt.shape[1] :])
    assert greedy.shape[1] == prompt.shape[1] + 6


def test_export_consolidates_an_fsdp_sharded_checkpoint(tmp_path, arithmetic_files):
    """A 1-process FSDP2Strategy run writes a torch distributed checkpoint directory; the export
    equals the weights that torch's own dcp_to_torch_save consolidates."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    train, val = arithmetic_files
    root = tmp_path / "run"
    args = [
        "fit",
        f"--config={TINY_YAML}",
        f"--data.train_files=[{train}]",
        f"--data.val_files=[{val}]",
        "--data.batch_size=2",
        "--data.max_length=128",
        "--trainer.strategy={class_path: psft_lightning.strategies.FSDP2Strategy}",
        "--trainer.max_steps=2",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
    ]
    try:
        run_cli(args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sharded = root / "checkpoints" / "last.ckpt"
    assert (sharded / "meta.pt").is_file() and (sharded / ".metadata").is_file()

    out = export_checkpoint(sharded, tmp_path / "hf")
    dcp_to_torch_save(sharded, tmp_path / "consolidated.pt")
    state = torch.load(tmp_path / "consolidated.pt", weights_only=True)["state_dict"]
    expected = load_model("tiny")
    expected.load_state_dict(
        {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    )
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert (logits(exported) - logits(expected)).abs().max() < 1e-5
    assert (logits(exported) - logits(load_model("tiny"))).abs().max() > 1e-4  # two steps were taken


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "hf")])
    assert exit_info.value.code == 2
    assert "nope.ckpt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "empty_dir"])
def test_export_of_a_corrupted_checkpoint_overwrites_nothing(damage, tmp_path, capsys):
    good = untrained_checkpoint(tmp_path / "good.ckpt")
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        data = open(good, "rb").read()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "foreign":
        torch.save({"weights": torch.ones(3)}, bad)
    else:
        bad.mkdir()
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    record(out, "psft export", ["keep.txt"])  # an earlier export's manifest: --overwrite may replace it
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(bad), str(out), "--overwrite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    expected = {
        "truncated": "truncated, corrupted or not a PyTorch checkpoint",
        "garbage": "truncated, corrupted or not a PyTorch checkpoint",
        "foreign": "not a psft-lightning training checkpoint",
        "empty_dir": "not a sharded (torch distributed checkpoint)",
    }[damage]
    assert err.splitlines()[-1].startswith("psft: error:") and expected in err
    assert sorted(p.name for p in out.iterdir()) == [".psft-manifest.json", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.ckpt", "bad.ckpt", "hf"])


def test_export_replaces_a_non_empty_directory_only_with_overwrite(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "good.ckpt")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    with pytest.raises(ConfigError, match="not empty; pass --overwrite"):
        export_checkpoint(ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="holds entries psft export did not write"):
        export_checkpoint(ckpt, out, overwrite=True)
    record(out, "psft export", ["keep.txt"])  # an earlier export's manifest: --overwrite may replace it
    with pytest.raises(ConfigError, match="--adapter-only needs a LoRA checkpoint"):
        export_checkpoint(ckpt, out, overwrite=True, adapter_only=True)
    assert sorted(p.name for p in out.iterdir()) == [".psft-manifest.json", "keep.txt"]

    export_checkpoint(ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (logits(AutoModelForCausalLM.from_pretrained(out)) - logits(load_model("tiny"))).abs().max() < 1e-5


def test_write_model_writes_a_plain_model_and_leaves_the_live_one_as_it_was(tmp_path):
    # the study exports its live policy before the final OOD sets: they must see it unchanged
    model, tokenizer = tiny_model(), tiny_tokenizer()
    model.config.use_cache = False
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    gguf = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    model.hf_quantizer, model.is_quantized = gguf, True
    model.config.quantization_config = {"quant_method": "gguf"}
    write_model(model, tokenizer, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["use_cache"] is True and "quantization_config" not in written
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert model.config.use_cache is False and model.config.quantization_config == {"quant_method": "gguf"}
    assert model.generation_config.eos_token_id is None and model.generation_config.pad_token_id is None
    assert model.hf_quantizer is gguf and model.is_quantized is True


def test_write_model_leaves_no_gguf_flag_on_a_model_that_had_none_of_its_own(tmp_path):
    model = tiny_model()
    gguf = model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    assert "is_quantized" not in model.__dict__
    write_model(model, tiny_tokenizer(), tmp_path)
    assert "is_quantized" not in model.__dict__ and model.hf_quantizer is gguf
