"""FSDP2Strategy: Lightning's ModelParallelStrategy with every process in one data-parallel group.

``ModelParallelStrategy`` defaults to tensor parallelism across the GPUs of a node and data
parallelism across nodes only. PSFTModule shards with FSDP2 alone, so here the data-parallel
group is all ``num_nodes x devices`` processes, which a YAML config cannot spell out for
``devices: auto``. Everything else (launch, DCP sharded checkpoints, gloo on CPU, NCCL on GPU) is
Lightning's.

``sequence_parallel_size: k`` splits the processes into groups of k that share each batch, every rank
holding 1/k of each row (``sequence_parallel``): the mesh is then 2D, ``data_parallel x
sequence_parallel``, and FSDP2 shards the weights over all processes of both dimensions.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from psft_lightning.checkpointing import remove_path, replace_path
from psft_lightning.errors import ConfigError
from psft_lightning.sequence_parallel import DATA_DIM, SEQUENCE_DIM


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over all processes (PSFTModule applies ``fully_shard``).

    Args:
        save_distributed_checkpoint: each rank writes its own shards (torch distributed checkpoint,
            a folder); ``False`` gathers full weights and optimizer states on rank 0 into one file.
        process_group_backend: ``nccl`` on GPUs and ``gloo`` on CPU by default.
        timeout: collective timeout.
        sequence_parallel_size: ranks that share each row (Ulysses sequence parallelism); must divide
            the number of processes and the model's attention heads. 1: off.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        sequence_parallel_size: int = 1,
    ) -> None:
        self.sequence_parallel_size = sequence_parallel_size
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        k = self.sequence_parallel_size
        if k < 1 or self._data_parallel_size % k:
            raise ConfigError(
                f"strategy sequence_parallel_size {k} must be >= 1 and divide the number of processes "
                f"({self.num_nodes} nodes x {self.num_processes} devices = {self._data_parallel_size})"
            )
        if k == 1:
            super().setup_environment()
            return
        super(ModelParallelStrategy, self).setup_environment()
        self._setup_distributed()
        from torch.distributed.device_mesh import init_device_mesh

        self._data_parallel_size //= k
        shape = (self._data_parallel_size, k)  # the k ranks of a group are consecutive
        self._device_mesh = init_device_mesh(
            self.root_device.type, shape, mesh_dim_names=(DATA_DIM, SEQUENCE_DIM)
        )
        self.lightning_module._device_mesh = self._device_mesh  # what configure_model receives

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
