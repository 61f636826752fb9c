"""Several processes, one training run: PyTorch's DistributedDataParallel under torchrun.

    torchrun --standalone --nproc_per_node=4 playground.py corpus.txt --gradient_accumulation_steps=8

torchrun starts one process per GPU (or CPU worker) and tells each its RANK, LOCAL_RANK and WORLD_SIZE. Each process
holds a full copy of the model, computes gradients on its own micro-batches, and DDP averages the gradients across
processes during backward (NCCL on GPUs, gloo on CPUs), so every copy takes the same optimizer step.

How the work is shared keeps the run independent of the number of processes: an optimizer step is
gradient_accumulation_steps = A micro-batches, micro-batch j of step s is drawn from (seed, s, j) alone (data.py),
and process r of W takes micro-batches r*A/W ... (r+1)*A/W - 1. One process with A=2 and two processes with A=2
therefore see the same data and reach the same weights, up to float summation order.

Without torchrun, Distributed() is a do-nothing stand-in, so playground.py has one code path.
Read next: generate.py.
"""
import contextlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from config import UserError


class Distributed:
    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device=None):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @classmethod
    def start(cls) -> "Distributed":
        """Join the process group torchrun describes in the environment; a plain single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl")
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo")
        return cls(rank, world_size, local_rank, device)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, evaluates, writes checkpoints and logs."""
        return self.rank == 0

    def my_micro_steps(self, accumulation_steps: int) -> range:
        """The micro-batch indices this process computes in every optimizer step."""
        if accumulation_steps % self.world_size:
            raise UserError(f"gradient_accumulation_steps={accumulation_steps} must be a multiple of the "
                            f"{self.world_size} processes; e.g. --gradient_accumulation_steps={self.world_size}")
        share = accumulation_steps // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)

    def wrap(self, model):
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def no_sync(self, model, last: bool):
        """Skip DDP's gradient all-reduce on all but the last local micro-batch: one exchange per step."""
        if self.enabled and not last:
            return model.no_sync()
        return contextlib.nullcontext()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over all processes (the same value everywhere afterwards)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)  # sum: gloo has no AVG
            value /= self.world_size
        return value

    def evaluate(self, estimate):
        """Run `estimate()` on rank 0 only (it sees all eval batches); the others wait. Returns None on them."""
        result = estimate() if self.is_main else None
        if self.enabled:
            dist.barrier()
        return result

    @contextlib.contextmanager
    def rank_zero_first(self):
        """Rank 0 runs the block first (building caches); the others wait, then run it and find the caches.

        If rank 0 fails (a corpus too short, a bad tokenizer), the others raise the same one-line error instead of
        waiting for it forever: rank 0 sends its outcome, None or the message, where a bare barrier would be."""
        if self.enabled and not self.is_main:
            failure = self._from_rank_zero(None)
            if failure is not None:
                raise UserError(failure)
        try:
            yield
        except Exception as e:
            if self.enabled and self.is_main:
                self._from_rank_zero(str(e) if isinstance(e, UserError) or type(e).__name__ == "TokenizerError"
                                     else f"rank 0 failed with {type(e).__name__}; see its traceback")
            raise
        if self.enabled and self.is_main:
            self._from_rank_zero(None)

    def _from_rank_zero(self, value):
        """Rank 0's `value` on every process (a collective call: every process must make it)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self):
        if self.enabled:
            dist.destroy_process_group()
