"""DDP through torchrun, and a clean stop on Ctrl-C / SIGTERM.

`torch.distributed` (gloo on CPU, nccl on GPU). Without torchrun's RANK / WORLD_SIZE this is a
single process and every call here is a no-op, so the loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Only the main rank writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed() -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


def barrier(d: Dist) -> None:
    if d.enabled:
        torch.distributed.barrier()


def teardown(d: Dist) -> None:
    barrier(d)
    if d.enabled:
        torch.distributed.destroy_process_group()


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (nothing to do in a single process)."""
    if d.enabled:
        torch.distributed.all_reduce(tensor)
    return tensor


class StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, save RUN_DIR/last, then stop (second one kills)."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def agreed(self, d: Dist) -> bool:
        """Stop only when every rank stops at the same step."""
        if not d.enabled:
            return self.set
        flag = torch.tensor([1.0 if self.set else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
