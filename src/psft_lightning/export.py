"""``psft export``: a training checkpoint -> a Hugging Face model directory.

The policy is rebuilt from the checkpoint's own hyper-parameters (model name, tiny config, LoRA
settings) and filled with its weights; the old-policy snapshot and the KL reference are never
written. Single-file Lightning checkpoints and sharded ones (a torch distributed checkpoint
directory, as ModelParallelStrategy saves) are both read; LoRA adapters are merged, or written alone
with ``adapter_only``. Everything is written to a temporary directory first and moved into place at
the end, so a failure leaves ``out_dir`` as it was.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from psft_lightning.checkpointing import replace_path
from psft_lightning.commands import command_parser
from psft_lightning.errors import ConfigError
from psft_lightning.lora import apply_lora, lora_settings
from psft_lightning.models import load_model, load_tokenizer
from psft_lightning.owned import record, refuse_foreign

log = logging.getLogger(__name__)

POLICY_PREFIX = "policy."
SHARDED_METADATA = "meta.pt"  # Lightning's file of non-tensor state beside a distributed checkpoint
WRAPPER_NAMES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def _load_torch_file(path: Path, what: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise ConfigError(
            f"Cannot read {what} {path}: it is truncated, corrupted or not a PyTorch checkpoint ({err})"
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"{what.capitalize()} {path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


def _hparams(data: dict[str, Any], path: Path) -> dict[str, Any]:
    hparams = data.get("hyper_parameters")
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise ConfigError(
            f"{path} is not a psft-lightning training checkpoint: it has no PSFTModule hyper-parameters "
            "(model name, tiny_config, lora) to rebuild the model from"
        )
    return hparams


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor] | Path]:
    """The module hyper-parameters and either the policy weights (single file) or the sharded
    checkpoint directory to load them from."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Checkpoint {path} does not exist")
    if path.is_dir():
        if not (path / SHARDED_METADATA).is_file():
            raise ConfigError(
                f"Checkpoint {path} is a directory without {SHARDED_METADATA}: not a sharded (torch "
                "distributed checkpoint) Lightning checkpoint"
            )
        return _hparams(_load_torch_file(path / SHARDED_METADATA, "checkpoint metadata"), path), path
    data = _load_torch_file(path, "checkpoint")
    hparams = _hparams(data, path)
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"Checkpoint {path} has no model weights (state_dict)")
    cleaned = {_clean(k): v for k, v in state.items()}
    return hparams, {k[len(POLICY_PREFIX) :]: v for k, v in cleaned.items() if k.startswith(POLICY_PREFIX)}


def _clean(key: str) -> str:
    for name in WRAPPER_NAMES:
        key = key.replace(name, "")
    return key


def _load_sharded(policy: nn.Module, directory: Path) -> None:
    """Read the policy's tensors from a torch distributed checkpoint into ``policy``, in this process."""
    import torch.distributed.checkpoint as dcp

    try:
        saved = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    except Exception as err:  # any unreadable metadata is a corrupted checkpoint
        raise ConfigError(f"Cannot read the sharded checkpoint {directory}: {err}") from err
    targets = {f"{POLICY_PREFIX}{k}": v for k, v in policy.state_dict().items()}
    present = {k: v for k, v in targets.items() if f"state_dict.{k}" in saved}
    loaded = {v.data_ptr() for v in present.values()}
    missing = [k for k, v in targets.items() if k not in present and v.data_ptr() not in loaded]
    if missing or not present:
        raise ConfigError(
            f"The sharded checkpoint {directory} does not match the model it names: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]})"
        )
    try:
        dcp.load({"state_dict": present}, checkpoint_id=str(directory))
    except Exception as err:
        raise ConfigError(f"Cannot load the sharded checkpoint {directory}: {err}") from err


def rebuild_policy(hparams: dict[str, Any], weights: dict[str, Tensor] | Path):
    """The trained policy as a plain causal LM (and the peft wrapper around it under LoRA, else None)."""
    policy = load_model(hparams["model"], hparams.get("tiny_config"))
    settings = lora_settings(hparams.get("lora"))
    wrapper = apply_lora(policy, settings) if settings is not None else None
    if isinstance(weights, Path):
        _load_sharded(policy, weights)
    else:
        result = policy.load_state_dict(weights, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ConfigError(
                f"The checkpoint's weights do not match model {hparams['model']!r}: missing "
                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
    return policy, wrapper


EXPORTER = "psft export"


def _prepare_out_dir(out_dir: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse a target whose replacement could destroy what export did not write: the checkpoint's own
    folder or one holding it, the working directory, ``/``, a mount point, a symbolic link, or a
    folder with files of anyone else (``--overwrite`` replaces only an earlier export)."""
    if not checkpoint.exists():
        raise ConfigError(f"Checkpoint {checkpoint} does not exist")
    if out_dir.is_file():
        raise ConfigError(f"Export target {out_dir} is a file, not a directory")
    resolved, source = out_dir.resolve(), checkpoint.resolve()
    if resolved in source.parents or resolved == source or source in resolved.parents:
        raise ConfigError(
            f"Export target {out_dir} is the folder of the checkpoint {checkpoint}, holds it, or lies in "
            "a sharded checkpoint; export to a folder beside the run's checkpoints instead"
        )
    if resolved == Path.cwd().resolve() or resolved == Path(resolved.anchor) or os.path.ismount(resolved):
        raise ConfigError(
            f"Export target {out_dir} is the working directory, the root or a mount point; give a "
            "folder (new or empty) under it"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"Export target {out_dir} is not empty; pass --overwrite to replace it")
    refuse_foreign(out_dir, EXPORTER, "Export target")


def _forget_gguf(model: nn.Module) -> None:
    """A model loaded from a .gguf file holds dequantized float weights but still names the GGUF
    "quantizer", for which save_pretrained refuses to write; what is written is a plain model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer.quantization_config, "quant_method", None) != "gguf":
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def write_model(model: nn.Module, tokenizer, directory: Path) -> None:
    """``model`` as a plain Hugging Face directory: safetensors, config, generation config (EOS and pad
    from ``tokenizer``) and the tokenizer with its chat template.

    What is written is changed on copies: the model (a live policy, in the study) keeps its config,
    generation config and GGUF flags."""
    flags = ("hf_quantizer", "is_quantized")  # instance attributes _forget_gguf may set
    kept = {name: model.__dict__[name] for name in flags if name in model.__dict__}
    config, generation = model.config, model.generation_config
    model.config, model.generation_config = copy.deepcopy(config), copy.deepcopy(generation)
    try:
        _forget_gguf(model)
        model.config.use_cache = True
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(directory, safe_serialization=True)
        model.generation_config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    finally:
        model.config, model.generation_config = config, generation
        for name in flags:
            model.__dict__.pop(name, None)
        model.__dict__.update(kept)


def _usual_modes(folder: Path) -> None:
    """Give the folder and its files the modes of any new file (0755/0644 under umask 022):
    mkdtemp makes the folder private and safetensors writes its file 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    adapter_only: bool = False,
) -> Path:
    """Write the checkpoint's policy as a Hugging Face directory (LoRA merged unless ``adapter_only``)."""
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, Path(checkpoint), overwrite)
    hparams, weights = read_checkpoint(checkpoint)
    if adapter_only and hparams.get("lora") is None:
        raise ConfigError(f"--adapter-only needs a LoRA checkpoint; {checkpoint} trained all weights")
    policy, wrapper = rebuild_policy(hparams, weights)
    policy.eval()
    tokenizer = load_tokenizer(hparams["model"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # ours to remove
    try:
        if adapter_only:
            wrapper.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            write_model(wrapper.merge_and_unload() if wrapper is not None else policy, tokenizer, tmp)
        _usual_modes(tmp)
        record(tmp, EXPORTER, [path.name for path in tmp.iterdir()])
        replace_path(tmp, out_dir)  # the old folder goes only once the new one is in place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s", checkpoint, out_dir)
    return out_dir


def export_main(args: list[str]) -> Path:
    """``psft export <checkpoint> <out_dir> [--overwrite] [--adapter-only]``."""
    parser = command_parser(
        prog="psft export",
        description="Write a training checkpoint (single file or sharded directory) as a Hugging Face "
        "model directory: safetensors, config, generation config and tokenizer with its chat template.",
    )
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("out_dir", help="the directory to write (must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    parser.add_argument(
        "--adapter-only", action="store_true", help="LoRA: write the peft adapter alone, not merged"
    )
    ns = parser.parse_args(args)
    return export_checkpoint(ns.checkpoint, ns.out_dir, ns.overwrite, ns.adapter_only)
