"""MatryoshkaHead and the nested losses against references written the paper's way (Algorithms 1 and 2)."""
import pytest
import torch
import torch.nn.functional as F

from mrl_hf import (
    MatryoshkaContrastiveLoss,
    MatryoshkaCrossEntropyLoss,
    MatryoshkaHead,
    nested_contrastive_loss,
    nested_linear_cross_entropy,
)

LISTS = [[3, 10, 64], [8, 16, 32, 64], [64]]


def reference_logits(head, x):
    """Algorithm 2: one loop over m, slicing x[:, :m] and W[:, :m]."""
    out = []
    for i, m in enumerate(head.nesting_list):
        if head.efficient:
            logits = x[:, :m] @ head.weight[:, :m].T
            if head.bias is not None:
                logits = logits + head.bias
        else:
            logits = head.classifiers[i](x[:, :m])
        out.append(logits)
    return out


def reference_loss(logits, y, coefs, **ce_kwargs):
    """Algorithm 1: sum_i c_i * CE(logits_i, y)."""
    return sum(c * F.cross_entropy(z, y, **ce_kwargs) for c, z in zip(coefs, logits))


def grads(*tensors):
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("nesting_list", LISTS)
@pytest.mark.parametrize("efficient", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_head_logits_and_gradients_match_algorithm_2(nesting_list, efficient, bias):
    torch.manual_seed(0)
    head = MatryoshkaHead(nesting_list, num_classes=7, efficient=efficient, bias=bias).double()
    x = torch.randn(5, 64, dtype=torch.float64, requires_grad=True)
    ours = head(x)
    ref = reference_logits(head, x)
    assert len(ours) == len(nesting_list)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    sum((z ** 2).sum() for z in ours).backward()
    got = grads(x, *head.parameters())
    x.grad = None
    head.zero_grad()
    sum((z ** 2).sum() for z in ref).backward()
    for a, b in zip(got, grads(x, *head.parameters())):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("nesting_list", LISTS)
@pytest.mark.parametrize("efficient", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_head_loss_matches_algorithm_1(nesting_list, efficient, bias, smoothing):
    torch.manual_seed(1)
    head = MatryoshkaHead(nesting_list, num_classes=11, efficient=efficient, bias=bias).double()
    x = torch.randn(2, 9, 64, dtype=torch.float64, requires_grad=True)  # (batch, tokens, d), like MLM
    y = torch.randint(0, 11, (2, 9))
    y[0, :4] = -100  # ignored positions
    coefs = [float(i + 1) for i in range(len(nesting_list))]
    loss_fct = MatryoshkaCrossEntropyLoss(relative_importance=coefs, label_smoothing=smoothing)

    out = head.loss(x, y, loss_fct, return_predictions=True)
    out.loss.backward()
    got = grads(x, *head.parameters())

    x.grad = None
    head.zero_grad()
    ref_logits = reference_logits(head, x.reshape(-1, 64))
    ref = reference_loss(ref_logits, y.reshape(-1), coefs, label_smoothing=smoothing)
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    per_dim_ref = torch.stack([F.cross_entropy(z, y.reshape(-1), label_smoothing=smoothing) for z in ref_logits])
    torch.testing.assert_close(out.per_dim_losses, per_dim_ref.detach())
    assert not out.per_dim_losses.requires_grad
    for a, b in zip(got, grads(x, *head.parameters())):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out.predictions, torch.stack([z.argmax(-1) for z in ref_logits]))


def test_fused_loss_in_float32_across_many_chunks(monkeypatch):
    import mrl_hf.losses as losses

    monkeypatch.setattr(losses, "_CHUNK_BYTES", {"cpu": 1, "accelerator": 1, "accelerator_floor": 1})  # 16-row chunks
    torch.manual_seed(2)
    w = torch.randn(50, 24, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    x = torch.randn(70, 24, requires_grad=True)
    y = torch.randint(0, 50, (70,))
    out = nested_linear_cross_entropy(x, w, b, y, [6, 12, 24])
    out.loss.backward()
    got = grads(x, w, b)
    for t in (x, w, b):
        t.grad = None
    ref = sum(F.cross_entropy(x[:, :m] @ w[:, :m].T + b, y) for m in [6, 12, 24])
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(got, grads(x, w, b)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_loss_with_half_precision_matmuls(monkeypatch, dtype):
    """The accelerator path (block matmuls in the input's half precision, logits in float32), run on the CPU over
    several chunks, against a float32 loop over the same half-precision values; tests/test_gpu.py runs it on CUDA."""
    import mrl_hf.losses as losses

    monkeypatch.setattr(losses, "_half_matmuls", lambda x, w: x.dtype in (torch.bfloat16, torch.float16))
    monkeypatch.setattr(losses, "_CHUNK_BYTES", {"cpu": 1, "accelerator": 1, "accelerator_floor": 1})  # 16-row chunks
    torch.manual_seed(4)
    x = (torch.randn(70, 24) / 2).to(dtype).requires_grad_()
    w = (torch.randn(50, 24) / 2).to(dtype).requires_grad_()
    b = torch.zeros(50, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 50, (70,))
    y[::5] = -100
    out = nested_linear_cross_entropy(x, w, b, y, [6, 12, 24], relative_importance=[1.0, 0.5, 2.0],
                                      label_smoothing=0.1)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and all(t.grad.dtype == dtype for t in (x, w, b))
    got = [t.grad.float() for t in (x, w, b)]
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, w, b))
    ref = sum(c * F.cross_entropy(xf[:, :m] @ wf[:, :m].T + bf, y, label_smoothing=0.1)
              for c, m in zip([1.0, 0.5, 2.0], [6, 12, 24]))
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-2, atol=0)
    for g, t in zip(got, (xf, wf, bf)):
        torch.testing.assert_close(g, t.grad, rtol=0, atol=2e-2 * t.grad.abs().max().item())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_is_exact_where_the_label_probability_underflows(smoothing):
    # logits hundreds apart: p_y is 0 in float32 for most rows, so the loss must not come from log(p_y)
    torch.manual_seed(3)
    x = (8 * torch.randn(40, 64)).requires_grad_()
    w = (8 * torch.randn(100, 64)).requires_grad_()
    b = torch.randn(100, requires_grad=True)
    y = torch.randint(0, 100, (40,))
    dims = [3, 10, 64]
    assert (F.softmax(x @ w.T + b, 1).gather(1, y[:, None]) == 0).float().mean() > 0.5
    out = nested_linear_cross_entropy(x, w, b, y, dims, relative_importance=[1, 2, 1], label_smoothing=smoothing)
    out.loss.backward()
    got = grads(x, w, b)
    for t in (x, w, b):
        t.grad = None
    per_dim = torch.stack([F.cross_entropy((x[:, :m] @ w[:, :m].T + b).double(), y, label_smoothing=smoothing)
                           for m in dims])
    (per_dim @ torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)).backward()
    torch.testing.assert_close(out.per_dim_losses.double(), per_dim.detach(), rtol=1e-6, atol=0)
    for a, r in zip(got, grads(x, w, b)):  # float32 logits of size ~500 vs a float64 reference
        torch.testing.assert_close(a, r.float(), rtol=1e-3, atol=3e-4)


def test_fused_loss_without_grad_and_with_frozen_weight():
    w = torch.randn(5, 8)
    x = torch.randn(4, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert not nested_linear_cross_entropy(x, w, None, y, [4, 8]).loss.requires_grad
    out = nested_linear_cross_entropy(x, w, None, y, [4, 8])
    out.loss.backward()
    assert x.grad is not None and w.grad is None


def test_fused_loss_all_ignored_is_zero_not_nan():
    out = nested_linear_cross_entropy(torch.randn(3, 8), torch.randn(5, 8), None, torch.full((3,), -100), [4, 8])
    assert out.loss.item() == 0.0


def test_fused_loss_ignores_rows_whose_placeholder_label_underflows():
    # an ignored row keeps label 0 as a placeholder; p(0) = 0 there must not turn the loss into inf * 0 = NaN
    torch.manual_seed(0)
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    x[0] = 0
    x[0, 0], w[0, 0] = 30.0, -4.0  # row 0: class-0 logit -120
    x.requires_grad_()
    y = torch.tensor([-100, 1, 2, 3])
    out = nested_linear_cross_entropy(x, w, None, y, [4, 8])
    ref = sum(F.cross_entropy(x[:, :m] @ w[:, :m].T, y) for m in [4, 8])
    torch.testing.assert_close(out.loss, ref)
    all_ignored = nested_linear_cross_entropy(x, w, None, torch.full((4,), -100), [4, 8])
    assert all_ignored.loss.item() == 0.0


def test_fused_loss_of_no_rows_has_zero_gradients():
    w = torch.randn(5, 8, requires_grad=True)
    out = nested_linear_cross_entropy(torch.randn(0, 8), w, None, torch.zeros(0, dtype=torch.long), [4, 8])
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.equal(w.grad, torch.zeros_like(w))


def test_fused_loss_under_bf16_autocast_is_finite_and_close():
    torch.manual_seed(3)
    w, x, y = torch.randn(20, 16), torch.randn(8, 16), torch.randint(0, 20, (8,))
    ref = nested_linear_cross_entropy(x, w, None, y, [4, 16]).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nested_linear_cross_entropy(x.bfloat16(), w, None, y, [4, 16]).loss
    assert torch.isfinite(got) and abs(got.float() - ref) < 0.1


def reference_contrastive(a, b, nesting_list, temperature, coefs, symmetric):
    total = 0
    for c, m in zip(coefs, nesting_list):
        logits = F.normalize(a[:, :m], dim=-1) @ F.normalize(b[:, :m], dim=-1).T / temperature
        labels = torch.arange(a.shape[0])
        loss = F.cross_entropy(logits, labels)
        if symmetric:
            loss = (loss + F.cross_entropy(logits[:, : a.shape[0]].T, labels)) / 2
        total = total + c * loss
    return total


@pytest.mark.parametrize("nesting_list", LISTS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("extra_negatives", [0, 3])
def test_contrastive_loss_matches_a_per_dim_loop(nesting_list, symmetric, extra_negatives):
    torch.manual_seed(4)
    a = torch.randn(6, 64, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6 + extra_negatives, 64, dtype=torch.float64, requires_grad=True)
    coefs = [1.0 + i for i in range(len(nesting_list))]
    out = nested_contrastive_loss(a, b, nesting_list, 0.07, coefs, symmetric=symmetric)
    out.loss.backward()
    got = grads(a, b)
    a.grad = b.grad = None
    ref = reference_contrastive(a, b, nesting_list, 0.07, coefs, symmetric)
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    for g, r in zip(got, grads(a, b)):
        torch.testing.assert_close(g, r)


def test_learnable_temperature_gets_a_gradient():
    loss_fct = MatryoshkaContrastiveLoss([4, 8], temperature=0.1, learnable_temperature=True)
    torch.testing.assert_close(loss_fct.temperature, torch.tensor(0.1))
    loss_fct(torch.randn(4, 8), torch.randn(4, 8)).loss.backward()
    assert loss_fct.log_logit_scale.grad is not None
    fixed = MatryoshkaContrastiveLoss([4, 8], temperature=0.1)
    assert not any(p.requires_grad for p in fixed.parameters())
    with pytest.raises(ValueError, match=r"temperature=0.005 is below 1 / max_logit_scale = 0.01"):
        MatryoshkaContrastiveLoss([4, 8], temperature=0.005)  # the cap used to train with 0.01 instead
    a, c = torch.randn(4, 8), torch.randn(4, 8)
    sharp = MatryoshkaContrastiveLoss([4, 8], temperature=0.005, max_logit_scale=1000.0)
    torch.testing.assert_close(sharp(a, c).loss, nested_contrastive_loss(a, c, [4, 8], 0.005).loss)
    import numpy as np

    for bad in (np.float32(0.0), np.float32(-0.05), torch.tensor(0.0), torch.tensor(-0.05)):  # NaN / reversed loss
        with pytest.raises(ValueError, match="must be > 0"):
            nested_contrastive_loss(a, c, [4, 8], bad)
    torch.testing.assert_close(nested_contrastive_loss(a, c, [4, 8], np.float32(0.1)).loss,
                               nested_contrastive_loss(a, c, [4, 8], 0.1).loss)


def test_logits_at_one_dim():
    torch.manual_seed(5)
    x = torch.randn(3, 16)
    efficient = MatryoshkaHead([4, 16], num_classes=5, efficient=True)
    torch.testing.assert_close(efficient.logits_at(x, 4), efficient(x)[0])
    assert efficient.logits_at(x, 7).shape == (3, 5)  # MRL-E serves interpolated dims too
    plain = MatryoshkaHead([4, 16], num_classes=5)
    torch.testing.assert_close(plain.logits_at(x, 16), plain(x)[1])
    with pytest.raises(ValueError, match="dim=7 has no classifier"):
        plain.logits_at(x, 7)


def test_bad_input_raises_clear_errors():
    head = MatryoshkaHead([4, 16], num_classes=5)
    with pytest.raises(ValueError, match="hidden has last dim 8, but this head expects 16"):
        head(torch.randn(2, 8))
    with pytest.raises(ValueError, match="labels have shape"):
        MatryoshkaCrossEntropyLoss()(head(torch.randn(2, 16)), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="relative_importance has 3 entries"):
        MatryoshkaCrossEntropyLoss([1, 1, 1])(head(torch.randn(2, 16)), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="label 9 is outside 0..4"):
        MatryoshkaHead([4, 16], 5, efficient=True).loss(torch.randn(2, 16), torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="num_classes"):
        MatryoshkaHead([4, 16], num_classes=0)
    with pytest.raises(ValueError, match="temperature=0"):
        nested_contrastive_loss(torch.randn(2, 4), torch.randn(2, 4), [2, 4], temperature=0)
    with pytest.raises(ValueError, match="anchors is empty"):
        nested_contrastive_loss(torch.randn(0, 4), torch.randn(0, 4), [2, 4])


def test_the_losses_import_no_transformers():
    import subprocess
    import sys

    code = "import sys, mrl_hf.losses, mrl_hf.heads; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
