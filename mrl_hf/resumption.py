"""What exact resumption of a Trainer run needs beyond the stock Trainer: complete checkpoints, and random masks.

Checkpoints: the Trainer writes the model, optimizer, scheduler and random states first and ``trainer_state.json``
last, so a ``checkpoint-N`` whose ``trainer_state.json`` reads back (with weights, and every process's random state)
was written to the end; anything else is what a killed save left (``checkpoint_problem``).

Random masks: the training dataloader collates one batch ahead of training (accelerate's prefetch), so when a
checkpoint is saved one batch has been collated, with a random state that the checkpoint does not hold, and not
trained on. The stock Trainer collates it again on resume with the checkpoint's state, so a collator that draws
random masks (``DataCollatorForLanguageModeling``, from the global generator or its own ``seed=`` one) masks it
differently. ``RecordingCollator`` remembers the random state before each call; ``MRLTrainer`` saves the one of the
batch collated ahead and replays it on resume (the Trainer's own random state is restored right after that batch).
A collator's own generator is also saved as it is when the checkpoint is written (evaluation may have drawn from it
after the batch collated ahead, and at the end of an epoch no batch is collated ahead) and restored after the replay,
or before the first batch. Exact only when the main process collates (``dataloader_num_workers=0``, the default).
"""
from __future__ import annotations

import collections
import inspect
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

COLLATOR_STATE_FILE = "collator_rng_state_{}.pth"  # the random state before the batch collated ahead
GENERATOR_STATE_FILE = "collator_generator_state_{}.pth"  # the collator's own generator when the checkpoint was saved


def checkpoint_problem(folder: Path, world_size: int = 1, random_states: bool = True) -> str | None:
    """Why a Trainer ``checkpoint-N`` folder cannot be resumed from, or None when it was written to the end.
    Weights are model files, FSDP's sharded ``pytorch_model_fsdp_*`` folder or DeepSpeed's ``global_step*`` one;
    ``random_states=False`` (``save_only_model``, which saves none) does not ask for every process's random state."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"no readable trainer_state.json: {type(exc).__name__}"
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin"),
               *(p for p in folder.glob("pytorch_model_fsdp*") if p.is_dir()),
               *(p for p in folder.glob("global_step*") if p.is_dir())]
    if not weights:
        return "no model weights"
    if random_states and world_size > 1 and len(list(folder.glob("rng_state_*.pth"))) < world_size:
        return "the random states of some processes are missing"
    return None


def has_optimizer_state(folder: Path) -> bool:
    """Whether a checkpoint holds the optimizer's state (``optimizer.pt``; FSDP's ``optimizer*``, DeepSpeed's
    ``global_step*``): ``save_only_model`` checkpoints hold weights only."""
    return any(folder.glob("optimizer*")) or any(p.is_dir() for p in folder.glob("global_step*"))


def set_aside(folder: Path) -> Path:
    """Rename an incomplete ``checkpoint-N`` to ``incomplete-checkpoint-N`` (``-2``, ``-3``, ... if taken), out of
    the Trainer's way (it writes ``checkpoint-N`` again and rotates only ``checkpoint-*``) with nothing deleted."""
    target, number = folder.with_name(f"incomplete-{folder.name}"), 1
    while target.exists():
        number += 1
        target = folder.with_name(f"incomplete-{folder.name}-{number}")
    folder.rename(target)
    return target


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _private_generator(collator):
    generator = getattr(collator, "generator", None)
    return generator if isinstance(generator, (torch.Generator, np.random.Generator)) else None


def generator_state(collator):
    """The state of the collator's own ``generator`` (``DataCollatorForLanguageModeling(seed=...)``), or None."""
    generator = _private_generator(collator)
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    return None if generator is None else generator.bit_generator.state


def set_generator_state(state, collator) -> None:
    if _private_generator(collator) is None and getattr(collator, "seed", None) is None:
        return  # the run that saved it had a seed=, this collator has none: it draws from the global generators
    if _private_generator(collator) is None and hasattr(collator, "create_rng"):  # a fresh (resumed) collator
        if inspect.signature(collator.create_rng).parameters:  # transformers >= 5.24 takes the generator's kind
            collator.create_rng("pt" if torch.is_tensor(state) else "np")
        else:  # before, the collator's return_tensors decides it
            collator.create_rng()
    generator = _private_generator(collator)
    if isinstance(generator, torch.Generator):
        generator.set_state(state)
    elif generator is not None:
        generator.bit_generator.state = state


def capture_state(collator) -> dict:
    """Every random state a collator can draw from: the global generators and its own ``generator``, if any."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    generator = generator_state(collator)
    if generator is not None:
        state["generator"] = generator
    return state


def restore_state(state: dict, collator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "generator" in state:
        set_generator_state(state["generator"], collator)


class RecordingCollator:
    """Wraps a training data collator: remembers the random state before each call, and on resume replays the state
    of the batch that was collated ahead of the checkpoint (``replay``)."""

    def __init__(self, collator):
        self.collator = collator
        self.calls = 0
        self._states = collections.deque(maxlen=8)  # (call number, state before it)
        self.replay = None  # (state, restore_after) for the first call after a resume
        self.start_generator = None  # without a replay: the collator's own generator state to start from

    def __call__(self, features):
        if self.start_generator is not None:
            set_generator_state(self.start_generator, self.collator)
            self.start_generator = None
        if self.replay is not None:
            state, restore_after = self.replay
            self.replay = None
            restore_state(state, self.collator)
            batch = self._record_and_call(features)
            restore_after()  # the checkpoint's own state: what the run drew from next
            return batch
        return self._record_and_call(features)

    def _record_and_call(self, features):
        self._states.append((self.calls, capture_state(self.collator)))
        self.calls += 1
        return self.collator(features)

    def state_before(self, call: int) -> dict | None:
        """The random state before call number ``call`` (counted from this collator's creation), if remembered."""
        return next((state for number, state in self._states if number == call), None)

    def __getattr__(self, name):  # only for names the wrapper lacks; unpickling asks before __dict__ is filled
        if name.startswith("__") or "collator" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.collator, name)
