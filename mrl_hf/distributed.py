"""Gathering embeddings across processes so a contrastive loss sees the global batch's negatives.

``all_gather_with_grad`` concatenates every process's rows (ranks in order) and lets gradients flow back to the
rows each process owns. Every process then computes the same global loss; in backward the gradients that all
processes computed for a process's rows are summed (``all_reduce``), which makes each process's gradient
``world_size`` times its share. DDP / accelerate average gradients over processes, so the averaged gradient is
exactly the single-process gradient of the global batch. Uses only ``all_gather`` and ``all_reduce``, so it
works on gloo (CPU) as well as NCCL. Processes may hold different numbers of rows (a short last batch).
"""
from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def distributed_world_size() -> int:
    """Number of processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """False in every process but rank 0 of a ``torchrun`` / ``accelerate launch`` run: the one that should write
    files. Read from the launcher's ``RANK``, so it holds before any process group or Trainer exists."""
    return int(os.environ.get("RANK", "0")) == 0


def end_distributed_run() -> None:
    """Tear down the process group that ``torchrun`` / ``accelerate launch`` set up; a no-op in a plain run.

    Call it once at the very end of a script, after the function that held the Trainer has returned. Left to the
    interpreter's exit, a gloo (CPU) group sometimes aborts a process ("terminate called without an active
    exception", pytorch#190489), which makes the launcher fail the whole run. The group must also outlive the
    DDP wrapper: if the wrapper held the last reference, the group's destructor would wait for its worker threads
    while holding the GIL they may need (a hang), hence the garbage collection first.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # Trainers (and their DDP wrappers) kept alive only by reference cycles
    dist.destroy_process_group()


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        world, rank = dist.get_world_size(), dist.get_rank()
        tensor = tensor.contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
        sizes = [int(s) for s in sizes]
        longest = max(sizes)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 (rank order), differentiable; returns ``tensor``
    itself outside a multi-process run. All processes must call it (it is a collective)."""
    if distributed_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)

