"""MRLTrainer's guards and costs: bf16 autocast trains every family; a non-finite loss stops training naming the
nesting dim (and never reaches a checkpoint) or is skipped on request; no value is read back to the host per step."""
import os
import sys

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf.modeling import MRLBertConfig, MRLBertModel  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("kind", tm.KINDS)
def test_bf16_autocast_on_cpu_trains_every_family_with_finite_float32_losses(kind, tmp_path):
    torch.set_num_threads(1)
    model, data = tm.build(kind)
    data = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in data]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                             logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, bf16=True,
                             save_strategy="no", remove_unused_columns=False)
    trainer = tm.trainer_class(kind)(model=model.float(), args=args, train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        dims = [h[f"loss_dim_{m}"] for m in tm.NESTING]
        assert np.isfinite([h["loss"], *dims]).all(), h
        assert h["loss"] == pytest.approx(sum(dims), rel=1e-5)


def _nan_trainer(tmp_path, optim="adamw_torch", **kw):
    data = tm.build("embed")[1]
    torch.manual_seed(0)
    model = MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], embedding_dim=16, **tm.TINY_BERT)).double()
    with torch.no_grad():  # a NaN in the 13th embedding feature poisons the prefix of size 16 only
        model.projection.bias[12] = float("nan")
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to=[],
                    logging_steps=1, disable_tqdm=True, use_cpu=True, save_strategy="no",
                    remove_unused_columns=False, optim=optim)
    settings.update(kw.pop("args", {}))
    return MRLTrainer(model=model, args=TrainingArguments(**settings), train_dataset=data, **kw)


def test_nonfinite_loss_raises_naming_the_nesting_dim(tmp_path):
    trainer = _nan_trainer(tmp_path)
    with pytest.raises(FloatingPointError, match=r"nesting dim\(s\) \['16'\] in step 0"):
        trainer.train()


def test_no_checkpoint_is_written_after_a_nonfinite_loss(tmp_path):
    # logs are rare here, checkpoints frequent: the check before each save stops the run
    trainer = _nan_trainer(tmp_path, args=dict(logging_steps=100, save_strategy="steps", save_steps=1))
    with pytest.raises(FloatingPointError, match=r"\['16'\] in step 0.*No checkpoint after that step was saved"):
        trainer.train()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")]


def test_nonfinite_loss_skip_option_leaves_parameters_unchanged(tmp_path):
    trainer = _nan_trainer(tmp_path, nonfinite_loss="skip", optim="sgd")
    before = _params(trainer)
    trainer.train()
    assert trainer.skipped_nonfinite_batches == 2
    for name, value in _params(trainer).items():
        assert torch.equal(value, before[name]) or name == "projection.bias", name
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss"] == 0 and h["loss_dim_16"] == 0 for h in logs)


def test_nonfinite_option_is_validated(tmp_path):
    with pytest.raises(ValueError, match="nonfinite_loss='ignore'"):
        _nan_trainer(tmp_path, nonfinite_loss="ignore")


def test_no_value_is_read_back_to_the_host_per_step(tmp_path, monkeypatch):
    """Per-dim logs and the non-finite check stay on the device between logs: MRLTrainer's own read-backs
    (``.item()``, ``.tolist()``, ``bool(tensor)``, ...) do not grow with the number of steps."""
    here = os.path.join("mrl_hf", "trainer.py")
    calls = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith(here):
                calls.append(name)
            return original(self, *args, **kwargs)
        return method

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    counts = []
    for steps in (3, 9):
        calls.clear()
        model, data = tm.build("vit")
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=steps,
                                 logging_steps=100, logging_nan_inf_filter=False, report_to=[], disable_tqdm=True,
                                 use_cpu=True, save_strategy="no", remove_unused_columns=False)
        MRLTrainer(model=model, args=args, train_dataset=data).train()
        counts.append(len(calls))
    assert counts[0] == counts[1], counts


def test_a_batch_nonfinite_on_one_process_is_skipped_on_every_process(tmp_path):
    """Two processes (gloo); process 1's first batch is NaN, process 0's is not. With nonfinite_loss='skip' both
    skip that step (else their collectives part and the run hangs or dies) and train the second one together."""
    tm.run_two_processes("nonfinite_skip_ddp.py", str(tmp_path), port_base=28500, timeout=300)
    runs = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [run["skipped"] for run in runs] == [1, 1]
    for name, value in runs[0]["after"].items():  # one step trained, the same on both processes
        assert torch.equal(value, runs[1]["after"][name]), name
    assert any(not torch.equal(value, runs[0]["before"][name]) for name, value in runs[0]["after"].items())
    assert runs[0]["logs"][0]["loss"] == 0 and runs[0]["logs"][1]["loss"] > 0


def _args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, **kw)


def test_settings_that_would_train_otherwise_than_they_say_are_refused(tmp_path, monkeypatch):
    model, data = tm.build("mlm")
    # fp16 on a CPU: accelerate enables no fp16 autocast there, so it trained in float32
    with pytest.raises(ValueError, match="fp16=True on a CPU trains in float32.*bf16=True"):
        MRLTrainer(model=model, args=_args(tmp_path, fp16=True), train_dataset=data)
    # a teacher that teacher_weight=0 turns off is named (it was ignored silently), a wrong one refused either way
    embed, pairs = tm.build("embed")
    with pytest.warns(UserWarning, match="teacher_weight=0 turns the teacher term off"):
        MRLTrainer(model=embed, args=_args(tmp_path), train_dataset=pairs, teacher=tm.build("embed")[0])
    with pytest.raises(ValueError, match="teacher='bogus'; pass 'original'"):
        MRLTrainer(model=embed, args=_args(tmp_path), train_dataset=pairs, teacher="bogus")
    MRLTrainer(model=embed, args=_args(tmp_path), train_dataset=pairs, teacher=None)  # "no teacher" in a sweep
    with pytest.raises(ValueError, match="teacher=None with teacher_weight > 0"):
        MRLTrainer(model=embed, args=_args(tmp_path), train_dataset=pairs, teacher=None, teacher_weight=1.0)
    # model_init builds a new model when training starts: the rotation kept was the first model's
    from mrl_hf import add_output_rotation

    def init():
        fresh = tm.build("embed")[0]
        add_output_rotation(fresh)
        return fresh

    with pytest.raises(ValueError, match="model_init builds a new model.*pass model= instead"):
        MRLTrainer(model_init=init, args=_args(tmp_path), train_dataset=pairs, rotation_learning_rate=0.5)
    # several processes, each dividing by its own labelled tokens: a mean of means, not the global batch's mean
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="average_tokens_across_devices=False with several processes"):
        MRLTrainer(model=model, args=_args(tmp_path, average_tokens_across_devices=False), train_dataset=data)


def test_a_second_train_call_logs_its_own_per_size_losses(tmp_path):
    model, data = tm.build("vit")
    data = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in data]
    trainer = MRLTrainer(model=model.float(), args=_args(tmp_path, max_steps=4, logging_steps=3), train_dataset=data)
    trainer.train()
    trainer.train()  # the first run's unlogged fourth step used to be added to the second run's first log
    logs = [h for h in trainer.state.log_history if "loss" in h]  # the second run's (each run has its state)
    assert len(logs) == 1
    for h in logs:
        assert h["loss"] == pytest.approx(sum(h[f"loss_dim_{m}"] for m in tm.NESTING), rel=1e-5), h
