"""Regression tests for the ways training went silently wrong (issue "Training that is right wherever it runs").

The equivalence matrix (test_training_matrix.py) covers gradient accumulation and several processes for every family
(the k x / N x gradients of the image classifiers, MLM's token weighting with uneven masks, per-dim logs gathered
like ``loss``), activation checkpointing and resumption. This file covers the rest, one test per finding.
"""
import inspect
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import (ResNetConfig, ResNetModel, TrainingArguments, ViTConfig, ViTModel,
                          default_data_collator)

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf import losses  # noqa: E402
from mrl_hf.losses import MatryoshkaCrossEntropyLoss, nested_cosine_similarities, nested_linear_cross_entropy  # noqa: E402
from mrl_hf.modeling import MRLResNetForImageClassification, MRLViTForImageClassification  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402


def _args(tmp_path, **kw):
    return TrainingArguments(**{**dict(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2,
                                       learning_rate=0.1, optim="sgd", logging_steps=1, report_to=[], disable_tqdm=True,
                                       use_cpu=True, save_strategy="no", remove_unused_columns=False,
                                       train_sampling_strategy="sequential"), **kw})


def _nested_smoothed_loss(kind, model, batch, eps):
    """sum_m CE(logits at m, labels, label_smoothing=eps), from each size's logits."""
    with torch.no_grad():
        if kind == "mlm":
            masked = batch["labels"] != -100
            return sum(F.cross_entropy(model(input_ids=batch["input_ids"], truncate_dim=m).logits[masked],
                                       batch["labels"][masked], label_smoothing=eps) for m in tm.NESTING)
        logits = model(pixel_values=batch["pixel_values"]).nested_logits
        return sum(F.cross_entropy(z, batch["labels"], label_smoothing=eps) for z in logits)


# ---- label smoothing and compute_loss_func ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlm", "resnet_e", "vit"])
def test_label_smoothing_factor_smooths_the_loss_at_every_size(kind, tmp_path):
    model, data = tm.build(kind)
    model.eval()  # the same BatchNorm statistics for the trainer's loss and the reference
    trainer = MRLTrainer(model=model, args=_args(tmp_path, label_smoothing_factor=0.1), train_dataset=data)
    batch = default_data_collator(data[:8])
    loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, _nested_smoothed_loss(kind, model, batch, 0.1), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(loss, _nested_smoothed_loss(kind, model, batch, 0.0))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["loss"] == pytest.approx(sum(h[f"loss_dim_{m}"] for m in tm.NESTING), rel=2e-6) for h in logs)


@pytest.mark.parametrize("kind", ["embed", "align", "distill"])
def test_label_smoothing_is_refused_where_there_are_no_class_labels(kind, tmp_path):
    model, data = tm.build(kind)
    with pytest.raises(ValueError, match=r"label_smoothing_factor=0.1.*no class labels"):
        tm.trainer_class(kind)(model=model, args=_args(tmp_path, label_smoothing_factor=0.1), train_dataset=data)


def test_compute_loss_func_is_refused(tmp_path):
    model, data = tm.build("vit")
    with pytest.raises(ValueError, match="compute_loss_func would replace it"):
        MRLTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                   compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum())


# ---- MRL-E heads from plain checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["resnet", "vit"])
@pytest.mark.parametrize("efficient", [True, False])
def test_heads_built_on_a_plain_checkpoint_are_initialised(family, efficient, tmp_path):
    torch.manual_seed(0)
    if family == "resnet":
        ResNetModel(ResNetConfig(**tm.TINY_RESNET)).save_pretrained(tmp_path)
        cls = MRLResNetForImageClassification
    else:
        ViTModel(ViTConfig(**tm.TINY_VIT), add_pooling_layer=False).save_pretrained(tmp_path)
        cls = MRLViTForImageClassification
    model = cls.from_pretrained(tmp_path, efficient=efficient, num_labels=5, nesting_list=[4, 8, 16])
    for name, p in model.head.named_parameters():
        assert torch.isfinite(p).all(), name
        assert name.endswith("bias") or p.abs().max() > 0, name
        if efficient:  # the shared weight gets what a fresh nn.Linear(16, 5) draws
            assert 0 < p.abs().max() <= 1 / 16 ** 0.5 + 1e-6, name
    batch = default_data_collator(tm.build(f"{family}_e")[1][:8])
    assert torch.isfinite(model(pixel_values=batch["pixel_values"].float(), labels=batch["labels"]).loss)


# ---- everything through forward: hooks see the head's weights -------------------------------------------------

@pytest.mark.parametrize("kind", ["mlm", "resnet_e", "vit"])
def test_heads_run_where_weights_only_exist_inside_forward_hooks(kind):
    # accelerate's CPU offload keeps every weight on the meta device and materialises it in the module's forward
    # pre-hook, as DeepSpeed ZeRO-3 gathers partitioned weights: a head driven by a method call would see no weight
    from accelerate import cpu_offload

    model, data = tm.build(kind)
    model.eval()
    batch = default_data_collator(data[:8])
    with torch.no_grad():
        expected = model(**batch)
        expected_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    cpu_offload(model, execution_device=torch.device("cpu"))
    head = model.cls.predictions.decoder if kind == "mlm" else model.head
    assert {p.device.type for p in head.parameters()} == {"meta"}
    with torch.no_grad():
        got = model(**batch)
        got_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)
    torch.testing.assert_close(got.per_dim_losses, expected.per_dim_losses, rtol=0, atol=0)
    torch.testing.assert_close(got_logits, expected_logits, rtol=0, atol=0)


# ---- precision --------------------------------------------------------------------------------------------------

def test_fused_loss_of_a_bf16_model_is_float32_with_bf16_gradients():
    torch.manual_seed(0)
    x = torch.randn(12, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(30, 16, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, 30, (12,))
    out = nested_linear_cross_entropy(x, w, None, y, [4, 16])
    assert out.loss.dtype == out.per_dim_losses.dtype == torch.float32
    out.loss.backward()
    assert x.grad.dtype == w.grad.dtype == torch.bfloat16
    ref = sum(F.cross_entropy(x.float()[:, :m] @ w.float()[:, :m].T, y) for m in [4, 16])
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)


def test_the_fused_loss_uses_public_operators_only():
    source = inspect.getsource(losses)
    assert "torch.ops." not in source and "aten" not in source


def test_nested_cosines_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    a, b = torch.randn(8, 64), torch.randn(10, 64)
    ref = nested_cosine_similarities(a.double(), b.double(), [4, 16, 64])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nested_cosine_similarities(a.bfloat16(), b.bfloat16(), [4, 16, 64])
    assert got.dtype == torch.float32
    # only the bf16 rounding of the inputs remains (~3 digits); bf16 norms of a 4-dim prefix lost more
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-2)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_bf16_autocast_gives_a_float32_loss_close_to_float32(kind):
    model, data = tm.build(kind)
    model = model.float().eval()
    batch = {k: v.float() if v.is_floating_point() else v for k, v in default_data_collator(data[:8]).items()}
    with torch.no_grad():
        ref, ref_dims = tm.batch_loss(kind, model, dict(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, dims = tm.batch_loss(kind, model, dict(batch))
    assert got.dtype == dims.dtype == torch.float32, kind
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=0)
    torch.testing.assert_close(dims, ref_dims, rtol=3e-2, atol=0)


# ---- losses with no labelled item ------------------------------------------------------------------------------

@pytest.mark.parametrize("efficient", [False, True])
def test_a_batch_with_every_label_ignored_has_zero_loss_and_zero_gradients(efficient):
    torch.manual_seed(0)
    logits = [torch.randn(4, 5, requires_grad=True) for _ in range(2)]
    labels = torch.full((4,), -100)
    if efficient:
        x, w = torch.randn(4, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
        out = nested_linear_cross_entropy(x, w, None, labels, [4, 8])
        out.loss.backward()
        grads = [x.grad, w.grad]
    else:
        out = MatryoshkaCrossEntropyLoss()(logits, labels)
        out.loss.backward()
        grads = [z.grad for z in logits]
    assert out.loss.item() == 0.0 and torch.equal(out.per_dim_losses, torch.zeros(2))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
