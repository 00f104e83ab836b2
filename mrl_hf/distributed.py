"""Helpers for multi-process runs: the world size, the main process, a clean end of a run. The models' differentiable
gather lives in ``mrl_hf.modeling.gather`` (``all_gather_with_grad`` is importable from here too)."""
from __future__ import annotations

import gc
import os

import torch.distributed as dist


def distributed_world_size() -> int:
    """Number of processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """False in every process but rank 0 of a multi-process run: the one that should write files. The rank of the
    initialised process group where there is one (``torch.multiprocessing.spawn`` sets no ``RANK``), else the
    launcher's ``RANK``, so that it holds under ``torchrun`` / ``accelerate launch`` before any group or Trainer
    exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
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


from .modeling.gather import all_gather_with_grad  # noqa: E402,F401  (the models use it; trainers import it from here)
