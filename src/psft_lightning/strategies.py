"""FSDP2Strategy: Lightning's ModelParallelStrategy with every process in one data-parallel group.

``ModelParallelStrategy`` defaults to tensor parallelism across the GPUs of a node and data
parallelism across nodes only. PSFTModule shards with FSDP2 alone, so here the data-parallel
group is all ``num_nodes x devices`` processes, which a YAML config cannot spell out for
``devices: auto``. Everything else (launch, DCP sharded checkpoints, gloo on CPU, NCCL on GPU) is
Lightning's.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from psft_lightning.checkpointing import remove_path, replace_path


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over all processes (PSFTModule applies ``fully_shard``).

    Args:
        save_distributed_checkpoint: each rank writes its own shards (torch distributed checkpoint,
            a folder); ``False`` gathers full weights and optimizer states on rank 0 into one file.
        process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPU by default.
        timeout: collective timeout.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
        """Write a sharded checkpoint beside its target and swap it in once every rank has finished,
        so a run killed mid-write leaves the previous checkpoint whole (Lightning writes in place)."""
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(filepath))
        staging = path.with_name(path.name + ".partial")
        if self.global_rank == 0:
            remove_path(staging)  # left by a run killed mid-write
        self.barrier("psft_checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("psft_checkpoint_written")
        if self.global_rank == 0:
            replace_path(staging, path)
        self.barrier("psft_checkpoint_swapped")
