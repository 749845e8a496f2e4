"""Model and tokenizer loading: the seeded tiny model, local HF directories, helpful errors, and the
embedded SmolLM2 tokenizer (loaded once)."""

from __future__ import annotations

import json

import pytest
import torch

from psft_lightning.data import IGNORE_INDEX, Fields, row_to_example
from psft_lightning.errors import ConfigError
from psft_lightning.models import load_model, load_tokenizer, tiny_model


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_model_is_seeded_and_independent_of_the_global_rng():
    torch.manual_seed(123)
    first = load_model("tiny")
    torch.manual_seed(456)
    assert same_weights(first, load_model("tiny"))
    assert not same_weights(first, load_model("tiny", {"seed": 1}))
    assert sum(p.numel() for p in first.parameters()) == 90_624
    assert first.config.vocab_size == len(load_tokenizer("tiny")) == 259


def test_tiny_tokenizer_is_byte_level_with_chatml_specials(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 256
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 257
    ids = tokenizer("héllo 12", add_special_tokens=True)["input_ids"]
    assert len(ids) == len("héllo 12".encode()) and tokenizer.decode(ids) == "héllo 12"
    assert tokenizer("<|im_start|>", add_special_tokens=False)["input_ids"] == [258]


def test_bad_tiny_config_is_a_config_error():
    with pytest.raises(ConfigError, match="(?s)Bad tiny_config.*hidden size \\(63\\) is not a multiple"):
        tiny_model({"hidden_size": 63})
    with pytest.raises(ConfigError, match="tiny_config is only used with model: tiny"):
        load_model("smollm2-135m-instruct", {"hidden_size": 32})


def test_local_hf_directory_round_trip(tmp_path, tokenizer):
    model = load_model("tiny", {"seed": 3})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded).__name__ == "LlamaForCausalLM" and same_weights(model, loaded)
    local = load_tokenizer(str(tmp_path))
    text = "<|im_start|>user\nhi<|im_end|>"
    assert local(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert local.eos_token_id == tokenizer.eos_token_id and local.pad_token_id == tokenizer.pad_token_id
    assert local.chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/no/such/model_dir", r"Unknown model '/no/such/model_dir': no such local directory"),
        ("./runs/nowhere/model", r"Unknown model './runs/nowhere/model'"),
        (
            "smollm2-135m",
            r"not a built-in name \(tiny, smollm2-135m-instruct\).*Did you mean 'smollm2-135m-instruct'\?",
        ),
        ("tiny2", r"Did you mean 'tiny'\?"),
        ("missing.gguf", r"GGUF file 'missing.gguf' does not exist"),
    ],
)
def test_missing_path_or_unknown_name_is_a_config_error(name, message):
    for load in (load_model, load_tokenizer):
        with pytest.raises(ConfigError, match=message):
            load(name)


def test_missing_model_under_a_local_directory_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for load in (load_model, load_tokenizer):
        with pytest.raises(ConfigError, match=r"Unknown model 'runs/model': no such local directory"):
            load("runs/model")


def test_directory_without_a_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=rf"Cannot load model '{tmp_path}'"):
        load_model(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"No tokenizer files in {tmp_path}"):
        load_tokenizer(str(tmp_path))


def test_embedded_smollm2_tokenizer_ends_completions_with_im_end(arithmetic_files):
    tokenizer = load_tokenizer("smollm2-135m-instruct")  # the tokenizer only, not the 135M model
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152
    with open(arithmetic_files[0], encoding="utf-8") as rows:
        row = json.loads(rows.readline())
    fields = Fields(prompt="question", completion="answer")
    example = row_to_example(row, tokenizer, "auto", fields, True, "train.jsonl:1")
    loss_ids = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX
    ]
    assert loss_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(loss_ids) == row["answer"] + "<|im_end|>"
    assert row["question"] in tokenizer.decode(example.input_ids[: example.labels.index(loss_ids[0])])
