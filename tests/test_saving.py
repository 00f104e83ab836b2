"""Atomic saves: an error mid-save leaves the previous checkpoint untouched; other files in the folder survive."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from training_matrix import TINY_BERT  # noqa: E402

from mrl_hf.modeling import MRLBertConfig, MRLBertModel  # noqa: E402
from mrl_hf.saving import atomic_directory, atomic_file, leftover_staging_dirs, recover_interrupted_save  # noqa: E402


def model(seed):
    torch.manual_seed(seed)
    return MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], **TINY_BERT))


def test_error_during_save_pretrained_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    good = model(0)
    good.save_pretrained(target)
    (target / "optimizer.pt").write_bytes(b"state")  # a Trainer file the model save must not lose
    (target / "checkpoint-5").mkdir()
    (target / "checkpoint-5" / "x").write_text("keep")
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}

    def boom(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(MRLBertModel, "_save_extra_files", boom)
    with pytest.raises(OSError, match="disk full"):
        model(1).save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    assert leftover_staging_dirs(target) == []
    monkeypatch.undo()

    new = model(1)
    new.save_pretrained(target)
    loaded = MRLBertModel.from_pretrained(target)
    for (name, a), b in zip(new.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert (target / "optimizer.pt").read_bytes() == b"state"
    assert (target / "checkpoint-5" / "x").read_text() == "keep"
    assert leftover_staging_dirs(target) == []


def test_stale_weight_shards_are_not_carried_over(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    model(0).save_pretrained(target)
    assert sorted(p.name for p in target.glob("*.safetensors")) == ["model.safetensors"]


def test_atomic_file_and_recovery(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
    with atomic_file(path) as f:
        f.write("new")
    assert path.read_text() == "new"

    # simulate a crash between "move the old folder aside" and "move the new one in"
    folder = tmp_path / "idx"
    with atomic_directory(folder) as staged:
        (staged / "f").write_text("v1")
    os.rename(folder, tmp_path / ".idx.old-deadbeef")
    assert recover_interrupted_save(folder) == folder.absolute()
    assert (folder / "f").read_text() == "v1"
