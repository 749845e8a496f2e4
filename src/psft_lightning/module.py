"""PSFTModule: the thin LightningModule. It wires the policies (``policies/``), the step
(``step/``), the metrics (``metrics/``) and the optimizer (``schedule``), and logs; it never knows
which objective it runs nor how pi_old is held."""

from __future__ import annotations

import logging
import time
from functools import partial

import lightning as L
import torch
from torch import Tensor, nn

from psft_lightning.checkpointing import RNG_KEY, check_resumable, rng_states, set_rng_states
from psft_lightning.errors import ConfigError
from psft_lightning.lora import LoraSettings, lora_settings, settings_dict
from psft_lightning.metrics import StepMetrics, ValidationMetrics, step_progress_bar
from psft_lightning.models import check_packed_attention
from psft_lightning.objectives import Needs, Objective, build_objective
from psft_lightning.ops import TokenStats
from psft_lightning.policies import Mode, OldPolicyModel, PolicySettings, build_old_policy, build_twins
from psft_lightning.policies.twins import check_strategy, drop_reference, keep_reference
from psft_lightning.schedule import Schedule, adamw, follow_new_horizon, lr_factor
from psft_lightning.sharding import FsdpDtype, is_sharded
from psft_lightning.step import token_stats, train_micro_batch
from psft_lightning.step.stats import NO_NEEDS

log = logging.getLogger(__name__)
SCHEDULE_KEY = "psft_schedule_total_steps"


class PSFTModule(L.LightningModule):
    """Fine-tune a causal LM with any registered objective.

    Args:
        model: ``smollm2-135m-instruct`` (embedded GGUF), ``tiny`` (random, config-built), a local
            Hugging Face directory, a ``.gguf`` file or a hub id.
        objective: a registered name (``ce``, ``kl``, ``psft``, ``psft_warmup``, or an entry-point
            plugin) or an Objective given by ``class_path``/``init_args``.
        lr, weight_decay, betas, eps: AdamW settings (no decay on norms and biases).
        warmup_steps, schedule, min_lr_ratio: linear warm-up, then cosine/linear decay or constant.
        gradient_checkpointing: recompute decoder layers in backward to save activation memory.
        chunk_size: tokens per chunk of the LM-head math (memory O(chunk_size x vocab)); None sizes
            chunks to about 128 MiB of fp32 logits each (``ops.auto_chunk_size``).
        tiny_config: overrides of the tiny model's config (``model: tiny`` only).
        attn_implementation: transformers attention (``sdpa``, ``eager``, ``flex_attention``,
            ``flash_attention_2``...); None keeps the model's default.
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
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be >= 1, got {chunk_size}")
        for name, value in (("fsdp_param_dtype", fsdp_param_dtype), ("fsdp_reduce_dtype", fsdp_reduce_dtype)):
            if value not in ("bf16", "fp32"):
                raise ConfigError(f"model.{name} must be bf16 or fp32, got {value!r}")
        self.objective = build_objective(objective)
        self.save_hyperparameters(ignore=["objective"])
        self.hparams["objective_name"] = type(self.objective).name or type(self.objective).__qualname__
        self.lora = lora_settings(lora)
        self.hparams["lora"] = settings_dict(self.lora)  # plain types: checkpoints load weights_only
        self.settings = PolicySettings(
            model, tiny_config, attn_implementation, gradient_checkpointing, self.lora, *fsdp_dtypes(self)
        )
        self.chunk_size = chunk_size
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None  # the frozen initial model, for a KL
        self.old_policy: nn.Module | None = None  # the FSDP2 snapshot, a submodule for sharded checkpoints
        self.old: OldPolicyModel | None = None  # pi_old, held by the OldPolicy callback's mode
        self.old_policy_mode: Mode = "snapshot"  # set by the OldPolicy callback before configure_model
        self.step_metrics = StepMetrics()
        self.val_metrics: ValidationMetrics | None = None
        self._last_step_end: float | None = None
        self._restored_rng: dict | None = None
        self._checkpoint_step: int | None = None
        self._schedule_total: int | None = None
        self._saved_schedule_total: int | None = None
        self._register_state_dict_hook(drop_reference)
        self.register_load_state_dict_pre_hook(keep_reference)

    def configure_model(self) -> None:
        """Load the policy and the twins the objective needs, once (sharded under FSDP2)."""
        if self.policy is not None:
            return
        needs = self.objective.needs()
        if self._trainer is not None:
            check_strategy(self.trainer.strategy, self.hparams.objective_name, needs.old_policy)
        snapshot = needs.old_policy and self.old_policy_mode == "snapshot"
        twins = build_twins(self.settings, self.device_mesh, needs.reference, snapshot)
        self.policy, self.reference, self.old_policy = twins.policy, twins.reference, twins.old_policy

    def hold_old_policy(self, mode: Mode) -> OldPolicyModel:
        """pi_old held as ``mode`` says (the OldPolicy callback's), starting from the current policy."""
        self.old = build_old_policy(mode, self.policy, self.old_policy, self.lora is not None, self._logprobs)
        return self.old

    def reference_model(self) -> nn.Module | None:
        """The frozen initial model for KL; under LoRA the policy itself, run with adapters disabled."""
        return self.policy if self.lora is not None else self.reference

    def token_stats(
        self, model: nn.Module, batch: dict, reference=None, needs: Needs | None = None
    ) -> TokenStats:
        """Per-token statistics at the batch's loss positions (``step.token_stats``), this run's chunks."""
        return token_stats(model, batch, reference, needs or NO_NEEDS, self.chunk_size)

    def _logprobs(self, model: nn.Module, batch: dict) -> Tensor:
        return self.token_stats(model, batch).logprobs

    def train(self, mode: bool = True):
        super().train(mode)
        for model in (self.reference, self.old_policy):
            if model is not None:
                model.eval()
        return self

    def on_fit_start(self) -> None:
        if getattr(self.trainer.datamodule, "packing", False):
            check_packed_attention(self.policy)

    def configure_callbacks(self):
        """Add an OldPolicy callback with defaults when the objective needs one and none is configured,
        and swap Lightning's default progress bar for one with short metric names."""
        from psft_lightning.callbacks import OldPolicy

        callbacks = []
        if self.objective.needs().old_policy and not any(
            isinstance(c, OldPolicy) for c in self.trainer.callbacks
        ):
            callbacks.append(OldPolicy())
        bar = step_progress_bar(self.trainer.progress_bar_callback)
        return callbacks + ([bar] if bar is not None else [])

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor | dict]:
        # micro-batches sharing one optimizer step: Lightning divides by accumulation, DDP/FSDP average
        # over ranks, so the loss is multiplied back by both
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        result = train_micro_batch(
            self.objective, self.policy, self.reference_model(), self.old, batch, self.global_step, scale,
            batch_idx, self.chunk_size,
        )  # fmt: skip
        self.step_metrics.update(result.metrics)
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._log_step()
        # the objective's per-token diagnostics reach callbacks (ClippedTokens) as on_train_batch_end outputs
        return {"loss": result.output.loss * scale, "tokens": result.output.tokens}

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.reference is not None and is_sharded(self.reference):
            self.reference.reshard()  # its gathered root fed the KL until this step's backward

    def _log_step(self) -> None:
        values = self.step_metrics.compute()
        now = time.perf_counter()
        tokens = values.pop("perf/step_tokens")
        if self._last_step_end is not None:
            values["train/tokens_per_sec"] = tokens / max(now - self._last_step_end, 1e-9)
        self._last_step_end = now
        values["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        # x-axis = optimizer steps completed, this one included (also what checkpoint names show);
        # set explicitly since Lightning's own logging step is one ahead after some resumes
        values["step"] = torch.tensor(float(self.global_step + 1))
        for name, value in values.items():
            bar = name in ("train/loss", "train/nll", "train/tokens_per_sec")
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=bar)

    def on_train_start(self) -> None:
        self._last_step_end = time.perf_counter()
        if self._restored_rng is not None:  # now, after the sanity check's draws, not at load time
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        if self._saved_schedule_total not in (None, self._schedule_total):
            scheduler, warn = self.lr_schedulers(), self.trainer.is_global_zero
            follow_new_horizon(
                scheduler, self._schedule_total, self._saved_schedule_total, self.hparams.schedule, warn
            )
        self._saved_schedule_total = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()
        checkpoint[SCHEDULE_KEY] = self._schedule_total

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another objective or model; keep its RNG state for on_train_start."""
        ckpt_path = self._trainer.ckpt_path if self._trainer is not None else None
        check_resumable(checkpoint.get("hyper_parameters", {}), dict(self.hparams), ckpt_path)
        self._restored_rng = checkpoint.get(RNG_KEY)
        self._checkpoint_step = checkpoint.get("global_step")
        self._saved_schedule_total = checkpoint.get(SCHEDULE_KEY)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics = ValidationMetrics(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        stats = self.token_stats(self.policy, batch)
        self.val_metrics.update(stats.logprobs, stats.correct, stats.entropy)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        if metrics is None:
            return
        if self.trainer.sanity_checking:
            # a full pre-training pass (num_sanity_val_steps: -1) is the step-0 baseline of the curve
            if self.trainer.num_sanity_val_steps == float("inf") and self.logger is not None:
                self.logger.log_metrics(metrics, step=self.global_step)  # 0 unless resumed
                if self.trainer.is_global_zero:
                    when = "before training" if self.global_step == 0 else "on resume"
                    log.info("step %d (%s): %s", self.global_step, when, _fmt(metrics))
            return
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/loss", sync_dist=False)
        fitting = self.trainer.state.fn == "fit"
        if fitting:  # x-axis = optimizer steps taken, as for the step-0 baseline
            self.log("step", float(self.global_step), sync_dist=False)
        if self.trainer.is_global_zero:
            step = self.global_step if fitting or self._checkpoint_step is None else self._checkpoint_step
            log.info("step %d: %s", step, _fmt(metrics))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = adamw(self.policy, hp.lr, hp.weight_decay, hp.betas, hp.eps)
        self._schedule_total = total = int(self.trainer.estimated_stepping_batches)
        factor = partial(
            lr_factor,
            warmup_steps=hp.warmup_steps,
            total_steps=total,
            schedule=hp.schedule,
            min_lr_ratio=hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fsdp_dtypes(module: PSFTModule) -> tuple[FsdpDtype, FsdpDtype]:
    return module.hparams.fsdp_param_dtype, module.hparams.fsdp_reduce_dtype


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
