"""Fault injection: a process saving a model, an index or an adaptor is killed (SIGKILL) at random moments and at
chosen points of the commit; every load afterwards gives the old object or the new one, bit for bit, and the next
save leaves no debris. A Trainer killed while it writes a checkpoint resumes from the last complete one.

Each trial forks the test process (so nothing is imported again) and kills the child; outcomes are counted and
printed (``pytest -s`` shows them; docs/reliability.md lists a run's counts).
"""
import collections
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from training_matrix import TINY_BERT  # noqa: E402

import mrl_hf.saving as saving  # noqa: E402
from mrl_hf.adaptor import MatryoshkaAdaptor  # noqa: E402
from mrl_hf.modeling import MRLBertConfig, MRLBertModel  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex  # noqa: E402

RANDOM_KILLS = int(os.environ.get("MRL_FAULT_KILLS", "15"))  # per kind; docs/reliability.md reports a run of 100
FORK = multiprocessing.get_context("fork")


def _model(seed):
    torch.manual_seed(seed)
    return MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], truncate_dim=4 + 4 * seed, **TINY_BERT))


def _index(seed):
    return MatryoshkaIndex(np.random.default_rng(seed).random((300 + 100 * seed, 16), np.float32), backend="torch")


def _adaptor(seed):
    torch.manual_seed(seed)
    adaptor = MatryoshkaAdaptor(16, [4, 8, 16] if seed == 0 else [8, 16], hidden_dim=8)
    torch.nn.init.normal_(adaptor.mlp[2].weight)
    return adaptor


def _state(kind, obj):
    if kind == "model":
        return {"truncate_dim": obj.config.truncate_dim, **{k: v.clone() for k, v in obj.state_dict().items()}}
    if kind == "index":
        return {"db": torch.from_numpy(np.array(obj._db))}
    return {"nesting": torch.tensor(obj.nesting_list), **{k: v.clone() for k, v in obj.state_dict().items()}}


KINDS = {
    "model": (_model, lambda m, d: m.save_pretrained(d), MRLBertModel.from_pretrained),
    "index": (_index, lambda i, d: i.save(d), MatryoshkaIndex.load),
    "adaptor": (_adaptor, lambda a, d: a.save_pretrained(d), MatryoshkaAdaptor.from_pretrained),
}


def _same(a, b):
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def _which(kind, folder, states):
    loaded = _state(kind, KINDS[kind][2](folder))
    matches = [name for name, state in states.items() if _same(loaded, state)]
    assert len(matches) == 1, f"{kind}: the loaded object is neither the old nor the new one"
    return matches[0]


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith((saving.STAGING_PREFIX, saving.JOURNAL_FILE))
            or p.name.endswith(".tmp")]


def _in_child():
    """A forked child must not take locks it shares with the parent: tqdm's write lock is a process-shared
    semaphore, and a child killed while it holds it (printing a progress bar) would block the parent forever."""
    import threading

    from tqdm import tqdm
    from transformers.utils import logging

    tqdm.set_lock(threading.RLock())
    logging.disable_progress_bar()
    torch.set_num_threads(1)


def _save_forever(kind, folder):
    _in_child()
    build, save, _ = KINDS[kind]
    objects = [build(0), build(1)]
    i = 1
    while True:
        save(objects[i % 2], folder)
        i += 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_random_kills_leave_the_old_or_the_new_object(kind, tmp_path):
    torch.set_num_threads(1)
    build, save, _ = KINDS[kind]
    states = {"old": _state(kind, build(0)), "new": _state(kind, build(1))}
    folder = tmp_path / kind
    save(build(0), folder)
    rng, outcomes = random.Random(kind), collections.Counter()
    for _ in range(RANDOM_KILLS):
        child = FORK.Process(target=_save_forever, args=(kind, folder))
        child.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        after_commit_point = (folder / saving.JOURNAL_FILE).exists()  # the load finishes that save
        outcomes["after the commit point" if after_commit_point else "before it / between saves"] += 1
        _which(kind, folder, states)
        assert _leftovers(folder) == []  # the load finished the commit and removed the killed save's staging
    save(build(0), folder)
    assert _leftovers(folder) == []
    print(f"\n{kind}: {RANDOM_KILLS} random kills -> {dict(outcomes)}")


def _killing(target, times, marker):
    """``target`` (a function of mrl_hf.saving's os) that kills the process on its ``times``-th call on a path that
    contains ``marker`` (the staging folder for the renames, the journal for its removal)."""
    calls = []

    def wrapper(path, *args, **kwargs):
        if marker in str(path):
            calls.append(path)
            if len(calls) == times:
                os.kill(os.getpid(), signal.SIGKILL)
        return target(path, *args, **kwargs)
    return wrapper


POINTS = {  # name: (function of os to patch, kill on its n-th call in the commit, the object a load gives then)
    "while fsyncing the staged files": ("fsync", 1, "old"),
    "after the journal, before any rename": ("replace", 1, "new"),
    "between the first and the second file": ("replace", 2, "new"),
    "after the renames, before the journal is removed": ("remove", 1, "new"),
}


def _save_and_die(kind, folder, function, times):
    _in_child()
    build, save, _ = KINDS[kind]
    new = build(1)
    if function == "fsync":  # os.fsync takes a descriptor: kill on the first fsync of the commit
        original = saving.os.fsync
        saving.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL) or original(fd)
    else:
        marker = saving.STAGING_PREFIX if function == "replace" else saving.JOURNAL_FILE
        setattr(saving.os, function, _killing(getattr(os, function), times, marker))
    save(new, folder)
    os._exit(3)  # not reached when the kill point is hit


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("point", list(POINTS))
def test_a_kill_at_a_chosen_point_of_the_commit(kind, point, tmp_path):
    torch.set_num_threads(1)
    build, save, _ = KINDS[kind]
    states = {"old": _state(kind, build(0)), "new": _state(kind, build(1))}
    folder = tmp_path / kind
    save(build(0), folder)
    function, times, expected = POINTS[point]
    child = FORK.Process(target=_save_and_die, args=(kind, folder, function, times))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL, f"{kind}: the kill point '{point}' was not reached"
    assert _which(kind, folder, states) == expected
    save(build(0), folder)
    assert _leftovers(folder) == [] and _which(kind, folder, states) == "old"


def _train_and_die_in_checkpoint(out, step):
    from transformers import Trainer

    import test_resumption

    _in_child()
    original = Trainer._save_optimizer_and_scheduler

    def die_at(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)  # the model is written, the optimizer and trainer state are not
        return original(self, output_dir)

    Trainer._save_optimizer_and_scheduler = die_at
    test_resumption.run(out)
    os._exit(3)


def test_a_trainer_killed_inside_a_checkpoint_resumes_from_the_last_complete_one(tmp_path):
    import test_resumption

    torch.set_num_threads(1)
    expected = test_resumption.params(test_resumption.run(tmp_path / "full"))
    out = tmp_path / "killed"
    child = FORK.Process(target=_train_and_die_in_checkpoint, args=(out, 3))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert (out / "checkpoint-3").is_dir() and not (out / "checkpoint-3" / "trainer_state.json").exists()
    resumed = test_resumption.run(out, resume=True)  # checkpoint-3 is skipped (and set aside), checkpoint-2 used
    for name, value in test_resumption.params(resumed).items():
        assert torch.equal(value, expected[name]), name
    assert (out / "incomplete-checkpoint-3").is_dir()
    shutil.rmtree(tmp_path / "full")
