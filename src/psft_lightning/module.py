"""PSFTModule: owns the policy (and the frozen reference for KL), computes per-token statistics and
delegates the loss to the configured objective plugin. It never knows which objective it runs."""

from __future__ import annotations

import copy
import logging
import time
from functools import partial

import lightning as L
import torch
from torch import Tensor, nn

from psft_lightning.checkpointing import RNG_KEY, check_resumable, rng_states, set_rng_states
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.lora import (
    AdapterSnapshot,
    LoraSettings,
    apply_lora,
    lora_settings,
    settings_dict,
)
from psft_lightning.models import check_packed_attention, load_model
from psft_lightning.objectives import Needs, Objective, build_objective
from psft_lightning.ops import TokenStats
from psft_lightning.schedule import Schedule, lr_factor
from psft_lightning.sharding import (
    FsdpDtype,
    Sharder,
    copy_local_shards,
    is_sharded,
    sharded_twin,
    skeleton,
)
from psft_lightning.step import objective_inputs, token_stats
from psft_lightning.step.stats import NO_NEEDS

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "reference."
SCHEDULE_KEY = "psft_schedule_total_steps"


def frozen(model: nn.Module) -> nn.Module:
    """A detached, eval-mode copy that takes no gradient (old policy, reference)."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone.eval()


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
        self.model_name = model
        self.tiny_config = tiny_config
        self.chunk_size = chunk_size
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None
        self.old_policy: nn.Module | None = None
        self._step_sums: dict[str, Tensor] = {}
        self._step_maxes: dict[str, Tensor] = {}
        self._val_sums: Tensor | None = None
        self._last_step_end: float | None = None
        self._restored_rng: dict | None = None
        self._checkpoint_step: int | None = None
        self._schedule_total: int | None = None
        self._saved_schedule_total: int | None = None
        self._register_state_dict_hook(_drop_reference)
        self.register_load_state_dict_pre_hook(_keep_reference)

    # ----------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Load the policy and its frozen twins (KL reference, old-policy snapshot) from the same
        initial weights, once; under ModelParallelStrategy all of them are sharded with FSDP2.

        Other strategies (DDP, Lightning's FSDPStrategy) wrap the module themselves after this hook,
        the twins included, so nothing is sharded here and nothing is wrapped twice.
        """
        if self.policy is not None:
            return
        self._check_strategy()
        self.policy = load_model(self.model_name, self.tiny_config)
        self.policy.config.use_cache = False
        if self.hparams.attn_implementation:
            try:
                self.policy.set_attn_implementation(self.hparams.attn_implementation)
            except (ValueError, ImportError) as err:
                raise ConfigError(f"model.attn_implementation: {err}") from err
        if self.hparams.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy.train()
        if self.lora is not None:
            self.policy = apply_lora(self.policy, self.lora).base_model.model
        needs_reference = self.objective.needs().reference and self.lora is None  # LoRA: adapters off
        sharder = self._sharder()
        if sharder is None:
            if needs_reference:
                self.reference = frozen(self.policy)
            return
        template = skeleton(self.policy)
        sharder(self.policy)
        if needs_reference:
            self.reference = sharded_twin(template, self.policy, sharder)
        if self._needs_snapshot():
            self.old_policy = sharded_twin(template, self.policy, sharder)

    def _check_strategy(self) -> None:
        """Lightning's FSDPStrategy (FSDP1) shards parameters outside its wrapped training step, where
        the OldPolicy callback runs pi_old: PSFT needs FSDP2, whose sharded twins run anywhere."""
        from lightning.pytorch.strategies import FSDPStrategy

        if (
            self.objective.needs().old_policy
            and self._trainer
            and isinstance(self.trainer.strategy, FSDPStrategy)
        ):
            raise ConfigError(
                f"objective {self.hparams.objective_name!r} needs an old policy, which Lightning's "
                "FSDPStrategy cannot run outside the training step; use strategy "
                "psft_lightning.strategies.FSDP2Strategy (FSDPStrategy works for ce and kl)."
            )

    def _sharder(self) -> Sharder | None:
        """FSDP2 over the data-parallel mesh that ModelParallelStrategy hands over, or None."""
        mesh = self.device_mesh
        if mesh is None:
            return None
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ConfigError(
                "PSFTModule shards with FSDP only, but the strategy set up tensor parallelism of size "
                f"{mesh['tensor_parallel'].size()}. Use strategy psft_lightning.strategies.FSDP2Strategy, or "
                "ModelParallelStrategy with tensor_parallel_size: 1 and data_parallel_size: <world size>."
            )
        dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        return Sharder(dp_mesh, self.hparams.fsdp_param_dtype, self.hparams.fsdp_reduce_dtype)

    def _needs_snapshot(self) -> bool:
        """A weight snapshot of pi_old is kept unless the run's OldPolicy callback works without one."""
        if not self.objective.needs().old_policy or self.lora is not None:  # LoRA: AdapterSnapshot
            return False
        from psft_lightning.callbacks import OldPolicy

        callbacks = [c for c in self._trainer.callbacks if isinstance(c, OldPolicy)] if self._trainer else []
        return not callbacks or any(c.mode == "snapshot" for c in callbacks)

    def on_fit_start(self) -> None:
        if getattr(self.trainer.datamodule, "packing", False):
            check_packed_attention(self.policy)

    def configure_callbacks(self):
        """Add an OldPolicy callback with defaults when the objective needs one and none is configured,
        and swap Lightning's default progress bar for one with short metric names."""
        from psft_lightning.callbacks import OldPolicy
        from psft_lightning.callbacks.progress import step_progress_bar

        callbacks = []
        if self.objective.needs().old_policy and not any(
            isinstance(c, OldPolicy) for c in self.trainer.callbacks
        ):
            callbacks.append(OldPolicy())
        bar = step_progress_bar(self.trainer.progress_bar_callback)
        if bar is not None:
            callbacks.append(bar)
        return callbacks

    def frozen_copy(self) -> nn.Module:
        """A frozen copy of the current policy (used by the OldPolicy callback).

        Under FSDP2 it is the snapshot sharded in ``configure_model``: a submodule (``old_policy``), so
        the sharded checkpoint carries its shards with the policy's; the callback keeps none of them.
        """
        if self.lora is not None:
            return AdapterSnapshot(self.policy)
        if not is_sharded(self.policy):
            return frozen(self.policy)
        if self.old_policy is None:
            raise RuntimeError("configure_model built no sharded old-policy snapshot for this objective")
        copy_local_shards(self.old_policy, self.policy)
        return self.old_policy

    def reference_model(self) -> nn.Module | None:
        """The frozen initial model for KL; under LoRA the policy itself, run with adapters disabled."""
        return self.policy if self.lora is not None else self.reference

    def train(self, mode: bool = True):
        super().train(mode)
        for model in (self.reference, self.old_policy):
            if model is not None:
                model.eval()
        return self

    # ------------------------------------------------------------------------------ statistics
    def token_stats(
        self, model: nn.Module, batch: dict, reference: nn.Module | None = None, needs: Needs | None = None
    ) -> TokenStats:
        """Per-token statistics at the batch's loss positions (``step.token_stats``), this run's chunks."""
        return token_stats(model, batch, reference, needs or NO_NEEDS, self.chunk_size)

    @torch.no_grad()
    def token_logprobs(self, model: nn.Module, batch: dict) -> Tensor:
        """Log-probs of the batch's loss tokens under ``model`` (e.g. the old policy), no grad."""
        if isinstance(model, AdapterSnapshot):
            with model.swapped_into(self.policy) as policy:
                return self.token_stats(policy, batch).logprobs.detach()
        logprobs = self.token_stats(model, batch).logprobs.detach()
        if is_sharded(model):
            model.reshard()  # free the gathered root, which a later refresh would leave stale
        return logprobs

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.reference is not None and is_sharded(self.reference):
            self.reference.reshard()  # its gathered root fed the KL until this step's backward

    # -------------------------------------------------------------------------------- training
    def _steps_scale(self) -> int:
        """Micro-batches that share one optimizer step: Lightning divides by accumulation, DDP/FSDP
        average over ranks, so the loss is multiplied back by both."""
        return self.trainer.accumulate_grad_batches * self.trainer.world_size

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor | dict]:
        step = self.global_step
        scale = self._steps_scale()
        objective = self.objective
        needs = objective.needs()
        reference = self.reference_model() if needs.reference else None
        stats = self.token_stats(self.policy, batch, reference, needs)
        n_local = stats.logprobs.numel()
        if n_local == 0:
            raise DataError(
                f"training batch {batch_idx} has no loss tokens (all labels are -100); "
                "the loss would be NaN. "
                "Every example needs at least one response token within max_length."
            )
        num_tokens = batch.get("step_loss_tokens")
        if num_tokens is None:  # a user's own datamodule: fall back to a per-micro-batch token-mean
            num_tokens = float(n_local * scale)
        out = objective(objective_inputs(stats, needs, batch, step, num_tokens))
        denom = torch.as_tensor(num_tokens, dtype=torch.float32, device=stats.logprobs.device)
        metrics = {
            **out.metrics,
            "train/loss": out.loss.detach(),
            "train/entropy": stats.entropy.sum() / denom,
            "train/token_accuracy": stats.correct.sum() / denom,
            "perf/step_tokens": _input_tokens(batch),
        }
        if "train/nll" not in metrics:  # every objective's curve has the comparable cross-entropy
            metrics["train/nll"] = -stats.logprobs.detach().sum() / denom
        self._accumulate(metrics)
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._log_step()
        # the objective's per-token diagnostics reach callbacks (ClippedTokens) as on_train_batch_end outputs
        return {"loss": out.loss * scale, "tokens": out.tokens}

    def _accumulate(self, metrics: dict[str, Tensor]) -> None:
        for name, value in metrics.items():
            value = value.detach().float().reshape(())
            if name.endswith("_max"):
                prev = self._step_maxes.get(name)
                self._step_maxes[name] = value if prev is None else torch.maximum(prev, value)
            else:
                self._step_sums[name] = self._step_sums.get(name, 0.0) + value

    def _reduce(self, values: dict[str, Tensor], op: str) -> dict[str, Tensor]:
        if not values or self.trainer.world_size == 1:
            return values
        stacked = torch.stack([v.to(self.device) for v in values.values()])
        if op == "max":
            torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.MAX)
        else:
            torch.distributed.all_reduce(stacked)
        return dict(zip(values, stacked, strict=True))

    def _log_step(self) -> None:
        sums = self._reduce(self._step_sums, "sum")
        maxes = self._reduce(self._step_maxes, "max")
        self._step_sums, self._step_maxes = {}, {}
        now = time.perf_counter()
        tokens = sums.pop("perf/step_tokens")
        if self._last_step_end is not None:
            sums["train/tokens_per_sec"] = tokens / max(now - self._last_step_end, 1e-9)
        self._last_step_end = now
        sums["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        # x-axis = optimizer steps completed, this one included (also what checkpoint names show);
        # set explicitly since Lightning's own logging step is one ahead after some resumes
        sums["step"] = torch.tensor(float(self.global_step + 1))
        for name, value in {**sums, **maxes}.items():
            self.log(
                name,
                value,
                on_step=True,
                on_epoch=False,
                prog_bar=name in ("train/loss", "train/nll", "train/tokens_per_sec"),
            )

    def on_train_start(self) -> None:
        self._last_step_end = time.perf_counter()
        if self._restored_rng is not None:  # now, after the sanity check's draws, not at load time
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        if self._saved_schedule_total not in (None, self._schedule_total):
            self._follow_new_horizon(self._saved_schedule_total)
        self._saved_schedule_total = None

    def _follow_new_horizon(self, saved_total: int) -> None:
        """A run resumed with another ``max_steps``: the lr schedule follows the new horizon from the
        first resumed step on (not the old one for a step and then the new one), and says so."""
        scheduler = self.lr_schedulers()
        step = scheduler.last_epoch
        old_lr = scheduler.get_last_lr()[0]
        lrs = [
            base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = lrs
        if self.trainer.is_global_zero and self.hparams.schedule != "constant":
            log.warning(
                "resumed at step %d with a schedule over %d steps; the checkpoint's schedule was over %d. "
                "The %s schedule now follows the new horizon: lr %.3g -> %.3g at step %d.",
                step,
                self._schedule_total,
                saved_total,
                self.hparams.schedule,
                old_lr,
                lrs[0],
                step,
            )

    # ----------------------------------------------------------------------------- checkpoints
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
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        stats = self.token_stats(self.policy, batch)
        self._val_sums += torch.stack(
            [
                -stats.logprobs.double().sum(),
                stats.correct.double().sum(),
                stats.entropy.double().sum(),
                torch.tensor(float(stats.logprobs.numel()), dtype=torch.float64, device=self.device),
            ]
        )

    def on_validation_epoch_end(self) -> None:
        totals = self._reduce({"v": self._val_sums}, "sum")["v"]
        nll, correct, entropy, n = totals.tolist()
        if n == 0:
            return
        metrics = {"val/loss": nll / n, "val/token_accuracy": correct / n, "val/entropy": entropy / n}
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

    # ------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self.policy.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = int(self.trainer.estimated_stepping_batches)
        self._schedule_total = total
        factor = partial(
            lr_factor,
            warmup_steps=hp.warmup_steps,
            total_steps=total,
            schedule=hp.schedule,
            min_lr_ratio=hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _input_tokens(batch: dict) -> Tensor:
    """Real (non-padding) input tokens of a micro-batch, for tokens/s."""
    if "num_input_tokens" in batch:
        return batch["num_input_tokens"].float()
    if "attention_mask" in batch:
        return batch["attention_mask"].sum().float()
    return torch.tensor(float(batch["input_ids"].numel()))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _drop_reference(module, state_dict, prefix, local_metadata) -> None:
    """The reference is re-derived from the initial weights: keep it out of checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix + REFERENCE_PREFIX)]:
        del state_dict[key]


def _keep_reference(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    if module.reference is None:
        return
    for key, value in module.reference.state_dict().items():
        state_dict.setdefault(prefix + REFERENCE_PREFIX + key, value)
