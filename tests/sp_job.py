"""The multi-process runs behind tests/test_sequence_parallel.py (gloo on CPU, started like torchrun).

``python tests/sp_job.py DATA OUT`` per rank. With 2 processes (one sequence-parallel group of 2) it
checks, against the same model run whole in this process: per-token statistics of padded, packed and
padding-free rows (GQA with 2 and with 1 KV head), the loss and gradients of a PSFT, KL and GIFT step
(summed over the group), and the seam token; then trains PSFT with ``sequence_parallel_size: 2``
through Lightning, with a sharded checkpoint at step 3 and a resume from it. With 4 processes it
trains ``ce`` on data parallel 2 x sequence parallel 2. Rank 0 writes OUT/results.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fsdp_job import GLOBAL_BATCH, RESUME_AT, run

from psft_lightning.data.batch import Batch
from psft_lightning.data.collate import collate, collate_packed
from psft_lightning.data.formats import Example
from psft_lightning.objectives import build_objective
from psft_lightning.policies import PolicySettings, build_old_policy
from psft_lightning.policies.twins import load_policy
from psft_lightning.sequence_parallel import SequenceParallel
from psft_lightning.step import token_logprobs, token_stats, train_micro_batch

K = 2


def examples(lengths: list[int], seed: int = 0) -> list[Example]:
    """Random token rows whose first third is prompt (label -100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 250, (n,), generator=g).tolist()
        labels = [-100] * (n // 3) + ids[n // 3 :]
        out.append(Example(ids, labels))
    return out


def batches() -> dict[str, dict]:
    rows = examples([13, 9, 6])
    return {
        "padded": collate(rows, 0),
        "packed": collate_packed(rows, 0, 20),
        "padding_free": collate_packed(rows, 0, 100),  # one row of 28 + nothing; odd lengths below
        "odd": collate_packed(examples([11, 6], seed=1), 0, 100),  # 17 tokens: padded to 18
    }


def whole_and_sliced(settings: PolicySettings, sequence: SequenceParallel) -> dict[str, float]:
    """Largest difference of each per-token statistic, whole rows vs the group's slices gathered."""
    whole = load_policy(settings)
    sliced = load_policy(PolicySettings(**{**vars(settings), "sequence_parallel_size": K}))
    worst: dict[str, float] = {}
    for name, batch in batches().items():
        one = token_stats(whole, batch)
        part_batch = sequence.shard(batch)
        part = token_stats(sliced, part_batch)
        for stat in ("logprobs", "entropy"):
            ref, mine = dense(Batch.of(batch), getattr(one, stat)), dense(part_batch, getattr(part, stat))
            width = mine.shape[1] * K
            ours = torch.zeros(ref.shape[0], width)
            ours[:, sequence.rank * mine.shape[1] : (sequence.rank + 1) * mine.shape[1]] = mine
            dist.all_reduce(ours)  # every position from the one rank that holds it
            worst[f"{settings.tiny_config}_{name}_{stat}"] = float(
                (ours[:, : ref.shape[1]] - ref).abs().max()
            )
            worst[f"{settings.tiny_config}_{name}_{stat}_beyond"] = float(ours[:, ref.shape[1] :].abs().max())
    return worst


def dense(batch: Batch, values: torch.Tensor) -> torch.Tensor:
    """Per-token ``values`` put back at their positions (the position that predicts the target)."""
    out = torch.zeros(batch.loss_mask.shape)
    out[batch.loss_mask] = values.detach().float()
    return out


def step_grads(objective: str, sequence: SequenceParallel) -> dict[str, float]:
    """One step of ``objective`` (PSFT against a stale pi_old): loss and gradient differences."""
    batch = batches()["packed"]
    batch["step_loss_tokens"] = (batch["labels"][:, 1:] != -100).sum()
    results = {}
    for k in (1, K):
        policy = load_policy(PolicySettings("tiny", sequence_parallel_size=k))
        reference = load_policy(PolicySettings("tiny", sequence_parallel_size=k))
        part = sequence.shard(batch) if k > 1 else batch
        old = build_old_policy("snapshot", policy, None, False, token_logprobs)
        old.refresh(0, lambda: ())
        with torch.no_grad():  # the policy moves on: the ratio is no longer 1 and some tokens clip
            for p in policy.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        result = train_micro_batch(build_objective(objective), policy, reference, old, part, 1, 1, 0)
        result.output.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
        loss = result.output.loss.detach().clone()
        if k > 1:
            dist.all_reduce(grads)
            dist.all_reduce(loss)
        results[k] = (loss, grads)
    (loss1, grads1), (loss2, grads2) = results[1], results[K]
    return {
        f"{objective}_loss": float((loss1 - loss2).abs()),
        f"{objective}_grad": float((grads1 - grads2).abs().max()),
        f"{objective}_grad_scale": float(grads1.abs().max()),
    }


def seam(sequence: SequenceParallel) -> dict[str, object]:
    """Only the first token of the second slice is a target; two batches differ only in that token."""
    out: dict[str, object] = {}
    for variant, token in (("a", 40), ("b", 41)):
        ids = torch.arange(10, 22).unsqueeze(0)  # 12 tokens: slices [0, 6) and [6, 12)
        ids[0, 6] = token
        labels = torch.full_like(ids, -100)
        labels[0, 6] = token
        batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(12).unsqueeze(0)}
        whole = token_stats(load_policy(PolicySettings("tiny")), batch).logprobs
        part = token_stats(
            load_policy(PolicySettings("tiny", sequence_parallel_size=K)), sequence.shard(batch)
        )
        out[f"{variant}_whole"] = whole.tolist()
        gathered = [None] * K
        dist.all_gather_object(gathered, part.logprobs.detach().tolist())
        out[f"{variant}_sliced"] = gathered
    return out


def main(data: str, out: str) -> None:
    torch.set_num_threads(1)
    root = Path(out)
    os.environ["PSFT_DATA_CACHE"] = str(root / "data_cache")
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["LOCAL_RANK"])
    results: dict[str, object] = {}
    if world == K:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        sequence = SequenceParallel(dist.group.WORLD, K, rank)
        results["forward"] = {
            **whole_and_sliced(PolicySettings("tiny"), sequence),
            **whole_and_sliced(PolicySettings("tiny", tiny_config={"num_key_value_heads": 1}), sequence),
        }
        results["step"] = {
            key: value for name in ("psft", "kl", "gift") for key, value in step_grads(name, sequence).items()
        }
        results["seam"] = seam(sequence)
        results["psft"] = run("psft", data, K, root / "psft", sequence_parallel=K)
        checkpoint = root / "psft" / "resume.ckpt"
        results["psft_checkpoint_is_sharded"] = checkpoint.is_dir()
        results["psft_resumed"] = run(
            "psft", data, K, root / "psft_resumed", resume=str(checkpoint), sequence_parallel=K
        )
    else:
        results["ce_dp2_sp2"] = run("ce", data, world, root / "ce", sequence_parallel=K)
    if rank == 0:
        (root / "results.json").write_text(
            json.dumps({**results, "resume_at": RESUME_AT, "batch": GLOBAL_BATCH})
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
