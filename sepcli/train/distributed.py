"""Training under torchrun: joining the process group, and the collectives by which the ranks decide together.
A decision one rank takes alone (stop on a signal, stop on a bad file, stop on a NaN) would leave the others
waiting forever in the next gradient all_reduce, so every such decision is an all_reduce of flags."""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist


def join() -> tuple[int, int]:
    """(rank, world size): under torchrun (WORLD_SIZE > 1) this process joins the group (gloo on CPU, nccl
    with CUDA); alone, (0, 1) and no process group, so that a single process needs no rendezvous."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_rank(world: int, *flags: bool) -> list[bool]:
    """Each flag, true when it is true on any rank (one all_reduce under torchrun): ranks decide together."""
    if world == 1:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t)
    return [bool(v > 0) for v in t.tolist()]


def step_summary(world: int, loss: float, stop: bool) -> tuple[float, bool, bool]:
    """(the step's loss averaged over the ranks' equal shares of the batch, whether any rank's loss is not
    finite, whether any rank must stop): one all_reduce under torchrun."""
    finite = math.isfinite(loss)
    if world == 1:
        return loss, not finite, stop
    t = torch.tensor([loss if finite else 0.0, 0.0 if finite else 1.0, 1.0 if stop else 0.0], dtype=torch.float64)
    dist.all_reduce(t)
    mean, bad, halt = t.tolist()
    return (mean / world if bad == 0 else math.nan), bad > 0, halt > 0


