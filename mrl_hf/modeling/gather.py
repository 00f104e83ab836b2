"""Gathering embeddings across processes so a contrastive loss sees the global batch's negatives (the models'
``gather_across_processes``).

``all_gather_with_grad`` concatenates every process's rows (ranks in order) and lets gradients flow back to the
rows each process owns. Every process then computes the same global loss; in backward the gradients that all
processes computed for a process's rows are summed (``all_reduce``), which makes each process's gradient
``world_size`` times its share. DDP / accelerate average gradients over processes, so the averaged gradient is
exactly the single-process gradient of the global batch. Uses only ``all_gather`` and ``all_reduce``, so it
works on gloo (CPU) as well as NCCL. Processes may hold different numbers of rows (a short last batch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


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
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)

