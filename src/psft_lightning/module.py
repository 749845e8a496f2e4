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

from psft_lightning.data.formats import IGNORE_INDEX
from psft_lightning.errors import ConfigError, DataError
from psft_lightning.models import backbone_and_head, load_model, uses_plain_head
from psft_lightning.objectives import Objective, ObjectiveInputs, build_objective
from psft_lightning.ops import TokenStats, chunked_token_stats, naive_token_stats
from psft_lightning.schedule import Schedule, lr_factor

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "reference."


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
        chunk_size: tokens per chunk of the LM-head math (memory O(chunk_size x vocab)).
        tiny_config: overrides of the tiny model's config (``model: tiny`` only).
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
        chunk_size: int = 1024,
        tiny_config: dict | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        if chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be >= 1, got {chunk_size}")
        self.objective = build_objective(objective)
        self.save_hyperparameters(ignore=["objective"])
        self.hparams["objective_name"] = type(self.objective).name or type(self.objective).__qualname__
        self.model_name = model
        self.tiny_config = tiny_config
        self.chunk_size = chunk_size
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None
        self._step_sums: dict[str, Tensor] = {}
        self._step_maxes: dict[str, Tensor] = {}
        self._val_sums: Tensor | None = None
        self._last_step_end: float | None = None
        self._register_state_dict_hook(_drop_reference)
        self.register_load_state_dict_pre_hook(_keep_reference)

    # ----------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Load the policy (and the reference, from the same initial weights) once."""
        if self.policy is not None:
            return
        self.policy = load_model(self.model_name, self.tiny_config)
        self.policy.config.use_cache = False
        if self.hparams.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy.train()
        if self.objective.needs_reference:
            self.reference = frozen(self.policy)

    def configure_callbacks(self):
        """Add an OldPolicy callback with defaults when the objective needs one and none is configured."""
        from psft_lightning.callbacks import OldPolicy

        if self.objective.uses_old_policy and not any(
            isinstance(c, OldPolicy) for c in self.trainer.callbacks
        ):
            return [OldPolicy()]
        return []

    def frozen_copy(self) -> nn.Module:
        """A frozen copy of the current policy (used by the OldPolicy callback)."""
        return frozen(self.policy)

    def train(self, mode: bool = True):
        super().train(mode)
        for model in (self.reference,):
            if model is not None:
                model.eval()
        return self

    # ------------------------------------------------------------------------------ statistics
    def token_stats(self, model: nn.Module, batch: dict, reference: nn.Module | None = None) -> TokenStats:
        """Per-token log-probs, entropy, accuracy (and KL to ``reference``) at the batch's loss positions."""
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE_INDEX
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        if not uses_plain_head(model):
            logits = model(**inputs, use_cache=False).logits[:, :-1][mask]
            ref_logits = None
            if reference is not None:
                with torch.no_grad():
                    ref_logits = reference(**inputs, use_cache=False).logits[:, :-1][mask]
            return naive_token_stats(logits, targets[mask], ref_logits)
        body, head = backbone_and_head(model)
        hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1][mask]
        ref_hidden = ref_weight = None
        if reference is not None:
            ref_body, ref_head = backbone_and_head(reference)
            with torch.no_grad():
                ref_hidden = ref_body(**inputs, use_cache=False).last_hidden_state[:, :-1][mask]
            ref_weight = ref_head.weight
        return chunked_token_stats(
            hidden, head.weight, targets[mask], ref_hidden, ref_weight, self.chunk_size
        )

    @torch.no_grad()
    def token_logprobs(self, model: nn.Module, batch: dict) -> Tensor:
        """Log-probs of the batch's loss tokens under ``model`` (e.g. the old policy), no grad."""
        return self.token_stats(model, batch).logprobs.detach()

    # -------------------------------------------------------------------------------- training
    def _steps_scale(self) -> int:
        """Micro-batches that share one optimizer step: Lightning divides by accumulation, DDP/FSDP
        average over ranks, so the loss is multiplied back by both."""
        return self.trainer.accumulate_grad_batches * self.trainer.world_size

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        step = self.global_step
        scale = self._steps_scale()
        objective = self.objective
        stats = self.token_stats(self.policy, batch, self.reference if objective.needs_reference else None)
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
        old_logprobs = None
        if objective.needs_old_logprobs(step):
            old_logprobs = batch.get("old_logprobs")
            if old_logprobs is None:
                if not batch.get("old_is_policy"):
                    raise RuntimeError(
                        "objective needs old-policy log-probs but the OldPolicy callback gave none"
                    )
                old_logprobs = stats.logprobs.detach()  # refresh step: the snapshot equals the policy
        mask = torch.ones_like(stats.logprobs, dtype=torch.bool)
        out = objective(
            ObjectiveInputs(
                stats.logprobs,
                mask,
                step=step,
                num_tokens=num_tokens,
                old_logprobs=old_logprobs,
                ref_kl=stats.ref_kl,
            )
        )
        denom = torch.as_tensor(num_tokens, dtype=torch.float32, device=stats.logprobs.device)
        metrics = {
            **out.metrics,
            "train/loss": out.loss.detach(),
            "train/entropy": stats.entropy.sum() / denom,
            "train/token_accuracy": stats.correct.sum() / denom,
            "perf/step_tokens": batch["attention_mask"].sum().float()
            if "attention_mask" in batch
            else torch.tensor(float(batch["input_ids"].numel())),
        }
        self._accumulate(metrics)
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self._log_step()
        return out.loss * scale

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
            sums["perf/tokens_per_sec"] = tokens / max(now - self._last_step_end, 1e-9)
        self._last_step_end = now
        sums["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        for name, value in {**sums, **maxes}.items():
            self.log(
                name,
                value,
                on_step=True,
                on_epoch=False,
                prog_bar=name in ("train/loss", "perf/tokens_per_sec"),
            )

    def on_train_start(self) -> None:
        self._last_step_end = time.perf_counter()

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
                self.logger.log_metrics(metrics, step=0)
                log.info("step 0 (before training): %s", _fmt(metrics))
            return
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/loss", sync_dist=False)
        log.info("step %d: %s", self.global_step, _fmt(metrics))

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
        factor = partial(
            lr_factor,
            warmup_steps=hp.warmup_steps,
            total_steps=total,
            schedule=hp.schedule,
            min_lr_ratio=hp.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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
