"""Scale-out correctness with MRLTrainer: 2 CPU processes (gloo, torch.distributed.run) end with the parameters of
one process on the same global batch; resuming from a mid-run checkpoint ends where the uninterrupted run ends;
bf16 autocast on CPU trains every model family with finite losses; the NaN/inf guard names the nesting dim."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import distributed_train  # noqa: E402

from mrl_hf.trainer import MRLTrainer  # noqa: E402


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = str(29500 + os.getpid() % 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           os.path.join(HERE, "distributed_train.py"), ",".join(distributed_train.KINDS), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {kind: torch.load(out / f"{kind}.pt") for kind in distributed_train.KINDS}


@pytest.mark.parametrize("kind", distributed_train.KINDS)
def test_two_processes_end_with_the_parameters_of_one_process(kind, two_process_run, tmp_path):
    torch.set_num_threads(1)
    single = _params(distributed_train.train(kind, str(tmp_path)))
    before = dict(distributed_train.build(kind)[0].named_parameters())
    ddp = two_process_run[kind]["params"]
    assert ddp.keys() == single.keys()
    moved = 0
    for name, value in single.items():
        # float64 training; only the order of the gradient sums differs between the two runs
        torch.testing.assert_close(ddp[name], value, rtol=1e-9, atol=1e-11, msg=name)
        moved += not torch.equal(value, before[name].detach())
    assert moved > 0.8 * len(single)  # training did change the parameters


def test_resume_from_mid_run_checkpoint_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    # 2 epochs of 3 steps; the checkpoint at step 4 is in the middle of epoch 2
    common = dict(max_steps=6, save_strategy="steps", save_steps=4, per_device_train_batch_size=8)
    full = distributed_train.train("embed", str(tmp_path / "full"), **common)
    resumed_model, data = distributed_train.build("embed")
    from transformers import TrainingArguments

    args = full.args.to_dict()
    args.update(output_dir=str(tmp_path / "full"))
    trainer = MRLTrainer(model=resumed_model, args=TrainingArguments(**{k: v for k, v in args.items()
                                                                        if k in TrainingArguments.__dataclass_fields__
                                                                        and TrainingArguments.__dataclass_fields__[k].init}),
                         train_dataset=data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert trainer.state.global_step == 6
    for name, value in _params(full).items():
        assert torch.equal(_params(trainer)[name], value), name
    full_losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    resumed_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert resumed_losses[-2:] == full_losses[-2:]


@pytest.mark.parametrize("kind", distributed_train.KINDS + ("vision",))
def test_bf16_autocast_on_cpu_trains_with_finite_losses(kind, tmp_path):
    torch.set_num_threads(1)
    trainer = _bf16_trainer(kind, tmp_path)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == distributed_train.STEPS
    for h in logs:
        dims = [v for k, v in h.items() if k.startswith("loss_dim_")]
        assert len(dims) == 3 and np.isfinite([h["loss"], *dims]).all(), h


def _bf16_trainer(kind, tmp_path):
    from transformers import TrainingArguments

    if kind == "vision":
        from test_vision import tiny

        model = tiny("resnet")
        g = torch.Generator().manual_seed(0)
        c = model.config.num_channels
        data = [{"pixel_values": torch.randn(c, 16, 16, generator=g), "labels": int(i % model.config.num_labels)}
                for i in range(distributed_train.N)]
    else:
        model, data = distributed_train.build(kind)
        model = model.float()
        data = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in data]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=distributed_train.STEPS,
                             learning_rate=1e-3, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True,
                             bf16=True, save_strategy="no", remove_unused_columns=False)
    return MRLTrainer(model=model, args=args, train_dataset=data)


def _nan_trainer(tmp_path, optim="adamw_torch", **kw):
    from transformers import TrainingArguments

    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    data = distributed_train.build("embed")[1]
    torch.manual_seed(0)
    model = MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], embedding_dim=16, **distributed_train.TINY_BERT))
    with torch.no_grad():  # a NaN in the 13th embedding feature poisons the prefix of size 16 only
        model.projection.bias[12] = float("nan")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to=[],
                             logging_steps=1, disable_tqdm=True, use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, optim=optim)
    return MRLTrainer(model=model, args=args, train_dataset=data, **kw)


def test_nonfinite_loss_raises_naming_the_nesting_dim(tmp_path):
    trainer = _nan_trainer(tmp_path)
    with pytest.raises(FloatingPointError, match=r"nesting dim\(s\) \['16'\] in step 0"):
        trainer.train()


def test_nonfinite_loss_skip_option_leaves_parameters_unchanged(tmp_path):
    trainer = _nan_trainer(tmp_path, nonfinite_loss="skip", optim="sgd")
    before = _params(trainer)
    trainer.train()
    assert trainer.skipped_nonfinite_batches == 2
    for name, value in _params(trainer).items():
        assert torch.equal(value, before[name]) or name == "projection.bias", name
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss"] == 0 for h in logs)


def test_nonfinite_option_is_validated(tmp_path):
    with pytest.raises(ValueError, match="nonfinite_loss='ignore'"):
        _nan_trainer(tmp_path, nonfinite_loss="ignore")
