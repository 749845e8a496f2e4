"""The training runs behind tests/test_fsdp.py, and the 2-process FSDP2 job they compare against.

``python tests/fsdp_job.py DATA OUT`` is started once per rank by the test (the environment carries
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, as torchrun would set them). In one job it trains ``ce``
and ``kl`` for 5 steps (``ce`` also with gradient accumulation, activation checkpointing and bf16
FSDP compute),
``psft`` (full snapshot, LoRA, lookahead) for 6 (checkpointing at step 3) and resumes each from that
sharded checkpoint, and probes the sharded twins; rank 0 writes everything to OUT/results.json.
Each rank writes the tokenisation cache entries it built to OUT/tokenised_rank{r}.json (the data is
tokenised once, by rank 0's ``prepare_data``, into a cache of the job's own).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from conftest import StepLosses
from torch.utils._python_dispatch import TorchDispatchMode

from psft_lightning.callbacks import OldPolicy
from psft_lightning.data import PSFTDataModule
from psft_lightning.module import PSFTModule
from psft_lightning.objectives import build_objective
from psft_lightning.strategies import FSDP2Strategy

GLOBAL_BATCH = 4
STEPS = {"ce": 5, "kl": 5, "psft": 6, "asft": 5, "gift": 5}  # asft: forward KL; gift: vocabulary path
RESUME_AT = 3
TOKENISED: list[str] = []  # cache entries this rank built, over all runs
# PSFT variants, each compared 1 vs 2 processes and resumed from a sharded checkpoint: the full
# snapshot (module-owned, sharded), LoRA (adapter snapshot, gathered into the callback state) and
# lookahead (per-rank cache of old log-probs, no snapshot)
PSFT_VARIANTS = {
    "psft": {},
    "psft_lora": {"lora": {"r": 4}},
    "psft_lookahead": {"old_policy_mode": "lookahead"},
}


def write_data(path: Path, rows: int = 24) -> str:
    """Short arithmetic prompt/completion rows (the byte tokenizer keeps them under 32 tokens)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            a, b = 3 * i + 1, 7 * i % 13
            f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": f"{a + b} ok"}) + "\n")
    return str(path)


def run(
    objective: str,
    data: str,
    devices: int,
    root: Path,
    resume: str | None = None,
    probe: L.Callback | None = None,
    accumulate: int = 1,
    old_policy_mode: str = "snapshot",
    precision: str = "32-true",
    sequence_parallel: int = 1,
    **module_kwargs,
) -> dict[str, dict[int, float]]:
    """Train ``objective`` on the tiny model at global batch 4, validating every 3 steps; return the
    per-step training losses (``train``), gradient norms (``grad_norm``) and validation losses."""
    L.seed_everything(0, verbose=False)
    losses, grad_norms = StepLosses(), StepLosses("train/grad_norm")
    callbacks: list[L.Callback] = [losses, grad_norms, OldPolicy(2, mode=old_policy_mode)]
    if objective == "psft":
        callbacks.append(SaveAt(RESUME_AT, root / "resume.ckpt"))
    if probe is not None:
        callbacks.append(probe)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=FSDP2Strategy(sequence_parallel_size=sequence_parallel) if devices > 1 else "auto",
        precision=precision,
        max_steps=STEPS[objective],
        val_check_interval=3 * accumulate,
        accumulate_grad_batches=accumulate,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    )
    module = PSFTModule(
        model="tiny", objective=build_objective(objective), lr=1e-2, warmup_steps=1, **module_kwargs
    )
    datamodule = PSFTDataModule(
        train_files=[data],
        tokenizer="tiny",
        use_chat_template=False,
        max_length=32,
        batch_size=GLOBAL_BATCH // (devices // sequence_parallel) // accumulate,
        val_files=[data],
        max_val_examples=6,
    )
    trainer.fit(module, datamodule, ckpt_path=resume)
    TOKENISED.extend(datamodule.tokenised)
    return {"train": losses.losses, "grad_norm": grad_norms.losses, "val": losses.val_losses}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    data: str, out: Path, timeout_s: float = 300, script: str = "fsdp_job.py", processes: int = 2
) -> dict:
    """Start every rank of the job ``script`` (as torchrun would) and return rank 0's results; raises
    with the ranks' log tails if one fails."""
    tests = Path(__file__).resolve().parent
    port = str(_free_port())
    ranks = []
    for rank in range(processes):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(processes),
            "NODE_RANK": "0",
            "LOCAL_RANK": str(rank),
            "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
        }
        log = (out / f"rank{rank}.log").open("w")
        cmd = [sys.executable, str(tests / script), data, str(out)]
        ranks.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(proc.poll() is None for proc, _ in ranks):
        if any(proc.poll() for proc, _ in ranks):  # one rank failed: the other would wait on it
            break
        time.sleep(0.5)
    for proc, log in ranks:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    if any(proc.returncode for proc, _ in ranks):
        tails = "\n".join((out / f"rank{r}.log").read_text()[-3000:] for r in range(processes))
        raise RuntimeError(f"{processes}-process job {script} failed:\n{tails}")
    return json.loads((out / "results.json").read_text())


class SaveAt(L.Callback):
    """Save a checkpoint after optimizer step ``step``, as ModelCheckpoint(every_n_train_steps) does."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class CollectiveCount(TorchDispatchMode):
    """Counts the collectives dispatched inside it. Not torch's CommDebugMode: its module tracker adds a
    forward hook per call of a module and, called twice, pops its parent list empty (IndexError)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("c10d", "_c10d_functional") and "wait" not in func.__name__:
            self.count += 1
        return func(*args, **(kwargs or {}))


class ShardProbe(L.Callback):
    """After training: are the twins sharded, and does a refresh or a snapshot forward communicate?"""

    def __init__(self) -> None:
        self.report: dict[str, object] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: PSFTModule) -> None:
        from torch.distributed.tensor import DTensor

        old_policy = next(c for c in trainer.callbacks if isinstance(c, OldPolicy))
        twins = {"old_policy": pl_module.old_policy, "callback_snapshot": old_policy.old.model}
        for name, model in twins.items():
            params = list(model.parameters())
            self.report[f"{name}_all_dtensor"] = all(isinstance(p, DTensor) for p in params)
            self.report[f"{name}_local_fraction"] = sum(p.to_local().numel() for p in params) / sum(
                p.numel() for p in params
            )
        self.report["snapshot_is_module_old_policy"] = old_policy.old.model is pl_module.old_policy
        with CollectiveCount() as comm:
            old_policy.old.refresh(trainer.global_step, coming=lambda: ())
        self.report["refresh_collectives"] = comm.count
        batch = next(iter(trainer.train_dataloader))
        with CollectiveCount() as comm:
            pl_module.old.logprobs(batch, trainer.global_step + 1)
        self.report["snapshot_forward_collectives"] = comm.count


def main(data: str, out: str) -> None:
    torch.set_num_threads(1)
    root = Path(out)
    os.environ["PSFT_DATA_CACHE"] = str(root / "data_cache")
    results: dict[str, object] = {
        name: run(name, data, 2, root / name) for name in ("ce", "kl", "asft", "gift")
    }
    results["ce_accumulate"] = run("ce", data, 2, root / "accumulate", accumulate=2)
    results["ce_checkpointing"] = run("ce", data, 2, root / "ac", gradient_checkpointing=True)
    results["ce_bf16"] = run("ce", data, 2, root / "bf16", fsdp_param_dtype="bf16", fsdp_reduce_dtype="fp32")
    results["psft_bf16_mixed"] = run("psft", data, 2, root / "psft_bf16_mixed", precision="bf16-mixed")
    probe = ShardProbe()
    for name, kwargs in PSFT_VARIANTS.items():
        results[name] = run("psft", data, 2, root / name, probe=probe if name == "psft" else None, **kwargs)
        checkpoint = root / name / "resume.ckpt"
        results[f"{name}_checkpoint_is_sharded"] = checkpoint.is_dir()
        results[f"{name}_resumed"] = run(
            "psft", data, 2, root / f"{name}_resumed", resume=str(checkpoint), **kwargs
        )
    results["probe"] = probe.report
    (root / f"tokenised_rank{os.environ['LOCAL_RANK']}.json").write_text(json.dumps(TOKENISED))
    if int(os.environ["LOCAL_RANK"]) == 0:
        (root / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
