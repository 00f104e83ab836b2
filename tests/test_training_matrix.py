"""The training equivalence matrix: every trainable family x every setting a user turns on, against a reference.

Families (tests/training_matrix.py): MRL-BERT masked LM (1 to 4 masked tokens per row), MRL-BERT embeddings
(nested InfoNCE), ResNet MRL and MRL-E, ViT MRL and MRL-E, ALIGN, the distillation trainer; and the classes that wrap
any transformers model: masked LM on XLM-R, embeddings on Qwen3 (last token), sequence classification on MPNet, MRL-E
image classification on ConvNeXt, a dual encoder of XLM-R and DINOv2. Activation checkpointing is checked where the
family has it (MPNet and ConvNeXt must refuse it).
Settings: gradient accumulation 1 and 2, activation checkpointing, 2 gloo processes, resuming a mid-epoch checkpoint.
Each MRLTrainer run must end with the parameters of the reference loop (plain torch, SGD, no Trainer) for the same
micro-batching, and log the same ``loss`` and ``loss_dim_*`` at every step (with ``loss == sum_m loss_dim_m``).

Tolerances: parameters rtol 1e-9 / atol 1e-11 (float64; the Trainer and the reference add the same terms in a
different order, which moves the last few bits). Logged losses rel 2e-6: the Trainer accumulates ``loss`` in a
float32 tensor. A gradient scaled by 2 (the bugs this matrix was built to catch) is off by 100%.
"""
import os
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
import training_matrix as tm  # noqa: E402

PARAM_TOL = dict(rtol=1e-9, atol=1e-11)
# Qwen3's RMSNorm computes in float32 even in a float64 model, so its runs agree to float32 precision only.
FLOAT32_INSIDE = {"embed_auto": dict(rtol=1e-5, atol=1e-6)}
LOG_REL = 2e-6
BATCHNORM = ("resnet", "resnet_e")

_references = {}


def reference(kind, micro):
    if (kind, micro) not in _references:
        _references[kind, micro] = tm.reference(kind, micro)
    return _references[kind, micro]


def micro_batches_of(kind, setting):
    """How many micro-batches the reference splits each global batch into for a setting."""
    if setting == "ga2":
        return 2
    if setting == "ddp2":  # BatchNorm normalises each process's rows; the rest sees the global batch's loss
        return 2 if kind in BATCHNORM else 1
    return 1


def assert_same_training(params, logs, kind, setting):
    ref_params, ref_logs = reference(kind, micro_batches_of(kind, setting))
    assert params.keys() == ref_params.keys()
    for name, value in ref_params.items():
        if setting == "ddp2" and ("running_" in name or "num_batches_tracked" in name):
            continue  # DDP broadcasts rank 0's BatchNorm statistics; the reference updated them with both halves
        torch.testing.assert_close(params[name], value, **FLOAT32_INSIDE.get(kind, PARAM_TOL),
                                   msg=f"{kind}/{setting}: {name}")
    assert len(logs) == tm.STEPS, logs
    for step, (got, want) in enumerate(zip(logs, ref_logs)):
        assert got["loss"] == pytest.approx(want["loss"], rel=LOG_REL), (kind, setting, step)
        assert got["dims"] == pytest.approx(want["dims"], rel=LOG_REL), (kind, setting, step)
        assert got["loss"] == pytest.approx(sum(got["dims"]), rel=LOG_REL), (kind, setting, step)  # c_m = 1


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    tm.run_two_processes("training_matrix.py", ",".join(tm.KINDS), str(out), port_base=29500, timeout=600)
    return {kind: torch.load(out / f"{kind}.pt") for kind in tm.KINDS}


@pytest.mark.parametrize("kind", tm.KINDS)
@pytest.mark.parametrize("setting", ["ga1", "ga2", "checkpointing"])
def test_one_process_matches_the_reference_loop(kind, setting, tmp_path):
    torch.set_num_threads(1)
    if setting == "checkpointing" and not tm.build(kind)[0].supports_gradient_checkpointing:
        with pytest.raises(ValueError, match="does not support activation checkpointing"):  # MPNet, ConvNeXt, ResNet
            tm.build(kind)[0].activation_checkpointing_enable()
        return
    trainer = tm.train(kind, str(tmp_path), grad_accum=2 if setting == "ga2" else 1,
                       checkpointing=setting == "checkpointing")
    assert_same_training(tm.parameters(trainer.model), tm.trainer_logs(trainer), kind, setting)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_two_processes_match_the_reference_loop(kind, two_process_runs):
    run = two_process_runs[kind]
    assert run["world_size"] == 2
    assert_same_training(run["params"], run["logs"], kind, "ddp2")


@pytest.mark.parametrize("kind", [k for k in tm.KINDS if k not in BATCHNORM])
def test_evaluation_per_dim_is_gathered_like_eval_loss(kind, two_process_runs, tmp_path):
    # the same trained weights evaluated by one process and by two (each on its half): the same metrics
    # (BatchNorm families are left out: DDP keeps rank 0's running statistics, so their weights differ)
    torch.set_num_threads(1)
    single = tm.evaluation(tm.train(kind, str(tmp_path), per_device_eval_batch_size=8))
    two = two_process_runs[kind]["eval"]
    assert single["loss"] == pytest.approx(sum(single["dims"]), rel=1e-6)
    assert two["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert two["dims"] == pytest.approx(single["dims"], rel=1e-6)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_evaluation_per_dim_adds_up_to_eval_loss_on_an_uneven_split(kind, two_process_runs):
    # 13 rows over two processes, whose last batch does not split evenly: eval_loss == sum of eval_loss_dim_* holds
    uneven = two_process_runs[kind]["eval_uneven"]
    assert uneven["loss"] == pytest.approx(sum(uneven["dims"]), rel=1e-6)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_training_changes_the_parameters_and_micro_batching_matters_only_where_it_should(kind):
    (one, _), (two, _) = reference(kind, 1), reference(kind, 2)
    model = tm.build(kind)[0]
    start = tm.parameters(model)
    names = [n for n, _ in model.named_parameters()]
    moved = sum(not torch.equal(one[n], start[n]) for n in names)
    assert moved > 0.7 * len(names), f"{kind}: only {moved} of {len(names)} parameter tensors changed"
    differs = any(not torch.allclose(one[n], two[n], **FLOAT32_INSIDE.get(kind, PARAM_TOL)) for n in one)
    # Item-weighted losses are the same whatever the micro-batching; batch-level ones are not (BatchNorm
    # statistics, in-batch negatives), so the matrix above does test which reference each setting follows.
    assert differs == (kind not in tm.ITEM_WEIGHTED), kind


@pytest.mark.parametrize("kind", tm.KINDS)
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(kind, tmp_path):
    torch.set_num_threads(1)
    full = tm.train(kind, str(tmp_path), save_strategy="steps", save_steps=2)  # 4 steps per epoch
    resumed = tm.train(kind, str(tmp_path), resume_from=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == tm.STEPS
    full_params, resumed_params = tm.parameters(full.model), tm.parameters(resumed.model)
    for name, value in full_params.items():
        assert torch.equal(resumed_params[name], value), f"{kind}: {name}"
    assert tm.trainer_logs(resumed) == tm.trainer_logs(full)  # steps 1-2 from the checkpoint's state, 3-4 new
