"""PSFTModule: the thin LightningModule. It wires the policies (``policies/``), the step
(``step/``), the metrics (``metrics/``) and the optimizer (``schedule``), and logs; it never knows
which objective it runs nor how pi_old is held."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from torch import Tensor, nn

from psft_lightning.callbacks.defaults import default_callbacks
from psft_lightning.callbacks.old_policy import held_by
from psft_lightning.compiled import compile_layers
from psft_lightning.errors import ConfigError
from psft_lightning.lora import LoraSettings, lora_settings, settings_dict
from psft_lightning.metrics import StepMetrics, ValidationMetrics, grad_norm, log_validation
from psft_lightning.models import check_packed_attention
from psft_lightning.objectives import Needs, Objective, build_objective
from psft_lightning.ops import TokenStats
from psft_lightning.policies import Mode, OldPolicyModel, PolicySettings, build_old_policy, build_twins
from psft_lightning.policies.twins import AUTOCAST_DTYPES, check_strategy, drop_reference, keep_reference
from psft_lightning.run_state import RunState
from psft_lightning.schedule import AdamWImpl, Schedule, adamw, lr_schedule
from psft_lightning.sequence_parallel import SequenceParallel
from psft_lightning.sharding import FsdpDtype, is_sharded
from psft_lightning.step import token_logprobs, token_stats, train_micro_batch
from psft_lightning.step.stats import NO_NEEDS


def check_optimizer_settings(
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    warmup_steps: int,
    min_lr_ratio: float,
) -> None:
    """Refuse AdamW and schedule settings outside their meaning (written so that NaN fails too)."""
    problems = {
        "model.lr": (lr, lr > 0, "> 0"),
        "model.weight_decay": (weight_decay, weight_decay >= 0, ">= 0 (a negative decay grows the weights)"),
        "model.eps": (eps, eps > 0, "> 0"),
        "model.warmup_steps": (warmup_steps, warmup_steps >= 0, ">= 0"),
        "model.min_lr_ratio": (min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1] (a fraction of model.lr)"),
        "model.betas": (
            list(betas),
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            "two numbers in [0, 1)",
        ),
    }
    for key, (value, valid, rule) in problems.items():
        if not valid:
            raise ConfigError(f"{key} must be {rule}, got {value}")


class PSFTModule(L.LightningModule):
    """Fine-tune a causal LM with any registered objective.

    Args:
        model: ``smollm2-135m-instruct`` (embedded GGUF), ``tiny`` (random, config-built), a local
            Hugging Face directory, a ``.gguf`` file or a hub id.
        objective: a registered name (``ce``, ``kl``, ``psft``, ``psft_warmup``, or an entry-point
            plugin) or an Objective given by ``class_path``/``init_args``.
        lr, weight_decay, betas, eps: AdamW settings (no decay on norms and biases).
        adamw: torch's AdamW kernel. ``fused`` (default) updates each parameter group in one kernel,
            about 6x faster than ``for-loop`` (torch's own CPU default) over SmolLM2-135M on this CPU; its
            fp32 results differ from the other two in the last bit (fused multiply-adds). ``foreach``
            gives the ``for-loop`` numbers exactly.
        warmup_steps, schedule, min_lr_ratio: linear warm-up, then cosine/linear decay or constant.
        gradient_checkpointing: recompute decoder layers in backward to save activation memory.
        chunk_size: tokens per chunk of the LM-head math (memory O(chunk_size x vocab)); None sizes
            chunks to about 128 MiB of fp32 logits each (``ops.auto_chunk_size``).
        tiny_config: overrides of the tiny model's config (``model: tiny`` only).
        attn_implementation: transformers attention (``sdpa``, ``eager``, ``flex_attention``,
            ``flash_attention_2``...); None keeps the model's default.
        compile: ``torch.compile`` each decoder layer (``compiled.compile_layers``; policy, reference
            and pi_old): one graph shared by the layers, dynamic shapes. The first step pays the
            compile (minutes on a small CPU); off by default since it did not pay back here.
        fsdp_param_dtype, fsdp_reduce_dtype: FSDP2 mixed precision under ModelParallelStrategy /
            FSDP2Strategy: the dtype layers compute in (sharded master weights stay as loaded) and
            the dtype gradients are reduce-scattered in. ``bf16`` / ``fp32`` is the usual pair.
        lora: train LoRA adapters (peft) instead of all weights. The KL reference is then the base
            model with the adapters switched off (no copy) and the old policy a copy of the adapters.
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        objective: Objective | str = "psft",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 0,
        schedule: Schedule = "cosine",
        min_lr_ratio: float = 0.1,
        gradient_checkpointing: bool = False,
        chunk_size: int | None = None,
        tiny_config: dict | None = None,
        attn_implementation: str | None = None,
        fsdp_param_dtype: FsdpDtype = "fp32",
        fsdp_reduce_dtype: FsdpDtype = "fp32",
        lora: LoraSettings | None = None,
        adamw: AdamWImpl = "fused",
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_optimizer_settings(lr, weight_decay, betas, eps, warmup_steps, min_lr_ratio)
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be >= 1, got {chunk_size}")
        if adamw not in ("fused", "foreach", "for-loop"):
            raise ConfigError(f"model.adamw must be fused, foreach or for-loop, got {adamw!r}")
        self.objective = build_objective(objective)
        self.save_hyperparameters(ignore=["objective"])
        self.hparams["objective_name"] = type(self.objective).name or type(self.objective).__qualname__
        self.lora = lora_settings(lora)
        self.hparams["lora"] = settings_dict(self.lora)  # plain types: checkpoints load weights_only
        built = (model, tiny_config, attn_implementation, gradient_checkpointing, self.lora)
        self.settings = PolicySettings(*built, fsdp_param_dtype, fsdp_reduce_dtype)
        self.chunk_size = chunk_size
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None  # the frozen initial model, for a KL
        self.old_policy: nn.Module | None = None  # the FSDP2 snapshot, a submodule for sharded checkpoints
        self.twin_dtype: torch.dtype | None = None  # autocast's dtype: unsharded frozen twins' Linears
        self.sequence: SequenceParallel | None = None  # this rank's sequence-parallel group, if any
        self.step_metrics = StepMetrics()
        self.val_metrics: ValidationMetrics | None = None
        self.run_state = RunState()
        self._grad_norm: tuple[int, Tensor | None] | None = None  # (step, norm): step_grad_norm's cache
        self._register_state_dict_hook(drop_reference)
        self.register_load_state_dict_pre_hook(keep_reference)

    def configure_model(self) -> None:
        """Load the policy and the twins the objective needs, once (sharded under FSDP2)."""
        if self.policy is not None:
            return
        needs = self.objective.needs()
        if self._trainer is not None:
            check_strategy(self.trainer.strategy, self.hparams.objective_name, needs.old_policy)
        callback = held_by(self._trainer)  # its mode decides whether pi_old is a sharded weight copy
        snapshot = needs.old_policy and (callback is None or callback.mode == "snapshot")
        self.twin_dtype = self._autocast_dtype()
        twins = build_twins(self.settings, self.device_mesh, needs.reference, snapshot, self.twin_dtype)
        self.policy, self.reference, self.old_policy = twins.policy, twins.reference, twins.old_policy
        self.sequence = SequenceParallel.of(self.device_mesh)
        if self.hparams.compile:
            for model in (self.policy, self.reference, self.old_policy):
                if model is not None:
                    compile_layers(model)

    def make_old_policy(self, mode: Mode) -> OldPolicyModel:
        """A new pi_old held as ``mode`` says, starting from the current policy; the OldPolicy callback
        keeps it. Its forward is the step's, at this run's chunks."""
        forward = partial(self._sliced_logprobs, chunk_size=self.chunk_size)
        lora = self.lora is not None
        return build_old_policy(mode, self.policy, self.old_policy, lora, forward, self.twin_dtype)

    def _autocast_dtype(self) -> torch.dtype | None:
        """The dtype the trainer's precision autocasts matmuls to (bf16 under bf16-mixed), in which the
        frozen twins keep their Linears (``policies.twins.store_linears``); None without autocast, and
        under Lightning's FSDPStrategy, whose flat parameters take one dtype per wrapped module."""
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(getattr(self._trainer, "strategy", None), FSDPStrategy):
            return None
        return AUTOCAST_DTYPES.get(str(getattr(self._trainer, "precision", None)))

    def sliced(self, batch: dict):
        """This rank's sequence-parallel slice of ``batch``; the batch itself without sequence parallelism."""
        return self.sequence.shard(batch) if self.sequence is not None else batch

    def _sliced_logprobs(self, model: nn.Module, batch: dict, chunk_size: int | None) -> Tensor:
        return token_logprobs(model, self.sliced(batch), chunk_size)

    @property
    def old(self) -> OldPolicyModel | None:
        """pi_old as the run's OldPolicy callback holds it (None before fit start or when unused)."""
        callback = held_by(self._trainer)
        return callback.old if callback is not None else None

    def reference_model(self) -> nn.Module | None:
        """The frozen initial model for KL; under LoRA the policy itself, run with adapters disabled."""
        return self.policy if self.lora is not None else self.reference

    def token_stats(
        self, model: nn.Module, batch: dict, reference=None, needs: Needs | None = None
    ) -> TokenStats:
        """Per-token statistics at the batch's loss positions (``step.token_stats``), this run's chunks."""
        return token_stats(model, batch, reference, needs or NO_NEEDS, self.chunk_size)

    def train(self, mode: bool = True):
        super().train(mode)
        for model in (self.reference, self.old_policy):
            if model is not None:
                model.eval()
        return self

    def on_fit_start(self) -> None:
        packing = getattr(self.trainer.datamodule, "packing", False)
        if packing:
            check_packed_attention(self.policy, packing)

    def configure_callbacks(self):
        return default_callbacks(self.trainer, self.objective.needs().old_policy)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor | dict]:
        # micro-batches sharing one optimizer step: Lightning divides by accumulation, DDP/FSDP average
        # over ranks, so the loss is multiplied back by both
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        batch = self.sliced(batch)
        result = train_micro_batch(
            self.objective, self.policy, self.reference_model(), self.old, batch, self.global_step, scale,
            batch_idx, self.chunk_size,
        )  # fmt: skip
        self.step_metrics.update(result.metrics)
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._log_step()
        # the objective's per-token diagnostics reach callbacks (ClippedTokens) as on_train_batch_end outputs
        return {"loss": result.output.loss * scale, "tokens": result.output.tokens, "batch": batch}

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.reference is not None and is_sharded(self.reference):
            self.reference.reshard()  # its gathered root fed the KL until this step's backward

    def _log_step(self) -> None:
        values = self.step_metrics.compute()
        values["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        # x-axis = optimizer steps completed, this one included (also what checkpoint names show);
        # set explicitly since Lightning's own logging step is one ahead after some resumes
        values["step"] = torch.tensor(float(self.global_step + 1))
        for name, value in values.items():
            bar = name in ("train/loss", "train/nll", "train/tokens_per_sec")
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=bar)

    def on_train_start(self) -> None:
        self.step_metrics.start_clock()
        self.run_state.start(self.lr_schedulers(), self.hparams.schedule, self.trainer.is_global_zero)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.run_state.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        ckpt_path = self._trainer.ckpt_path if self._trainer is not None else None
        self.run_state.load(checkpoint, dict(self.hparams), ckpt_path)

    def step_grad_norm(self) -> Tensor | None:
        """This optimizer step's gradient norm before clipping, computed once per step (it is logged
        here and checked by StopOnNonFinite, whose hook runs first)."""
        if self._grad_norm is None or self._grad_norm[0] != self.global_step:
            self._grad_norm = (self.global_step, grad_norm(self.policy))
        return self._grad_norm[1]

    def on_before_optimizer_step(self, optimizer) -> None:
        norm = self.step_grad_norm()
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics = ValidationMetrics(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        stats = self.token_stats(self.policy, self.sliced(batch))
        self.val_metrics.update(stats.logprobs, stats.correct, stats.entropy)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        if metrics is not None:
            log_validation(self, metrics, self.run_state.checkpoint_step)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = adamw(self.policy, hp.lr, hp.weight_decay, hp.betas, hp.eps, hp.adamw)
        self.run_state.schedule_total = total = int(self.trainer.estimated_stepping_batches)
        scheduler = lr_schedule(optimizer, hp.warmup_steps, total, hp.schedule, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
