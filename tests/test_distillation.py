import pytest
import torch
import torch.nn.functional as F

from mrl_hf.distillation import MatryoshkaDistillationLoss, similarity_distillation_loss, teacher_similarities
from mrl_hf.losses import nested_contrastive_loss

@pytest.fixture(autouse=True)
def _one_thread():
    # These tests run many tiny matmuls; on cores shared with other jobs, 2 threads are far slower than 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def _brute_force(student, teacher, dims, top_k):
    """The three terms written out with loops, one prefix at a time."""
    t = F.normalize(teacher, dim=1) @ F.normalize(teacher, dim=1).T
    n = len(student)
    pair, topk, listwise = [], [], []
    for m in dims:
        s = F.normalize(student[:, :m], dim=1)
        s = s @ s.T
        gaps = [abs(s[i, j] - t[i, j]) for i in range(n) for j in range(n) if i != j]
        pair.append(torch.stack(gaps).mean())
        rows = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            nearest = sorted(others, key=lambda j: -t[i, j])[:top_k]
            rows += [abs(s[i, j] - t[i, j]) for j in nearest]
        topk.append(torch.stack(rows).mean())
        kls = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            p = F.softmax(t[i, others] / 0.1, 0)
            logq = F.log_softmax(s[i, others] / 0.1, 0)
            kls.append((p * (p.log() - logq)).sum())
        listwise.append(torch.stack(kls).mean())
    return torch.stack(pair), torch.stack(topk), torch.stack(listwise)


def test_terms_match_brute_force():
    torch.manual_seed(0)
    student, teacher = torch.randn(9, 12, dtype=torch.float64), torch.randn(9, 20, dtype=torch.float64)
    dims = [3, 6, 12]
    pair, topk, listwise = _brute_force(student, teacher, dims, top_k=3)
    kwargs = dict(top_k=3, listwise_temperature=0.1)
    only = lambda **w: similarity_distillation_loss(student, teacher, dims, **{**dict(
        pairwise_weight=0.0, topk_weight=0.0, listwise_weight=0.0), **w}, **kwargs).per_dim_losses
    torch.testing.assert_close(only(pairwise_weight=1.0), pair)
    torch.testing.assert_close(only(topk_weight=1.0), topk)
    torch.testing.assert_close(only(listwise_weight=1.0), listwise)
    out = similarity_distillation_loss(student, teacher, dims, [1.0, 2.0, 0.5], pairwise_weight=2.0,
                                       topk_weight=0.5, listwise_weight=0.25, **kwargs)
    per_dim = 2 * pair + 0.5 * topk + 0.25 * listwise
    torch.testing.assert_close(out.per_dim_losses, per_dim)
    torch.testing.assert_close(out.loss, (torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) * per_dim).sum())


def test_student_equal_to_teacher_has_zero_loss_at_full_dim_only():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    out = similarity_distillation_loss(x, x, [4, 8, 32], listwise_weight=1.0)
    assert out.per_dim_losses[-1] < 1e-5
    assert (out.per_dim_losses[:2] > 0.05).all()  # random prefixes lose the structure


def test_gradient_flows_to_student_not_teacher():
    student = torch.randn(8, 16, requires_grad=True)
    teacher = torch.randn(8, 16, requires_grad=True)
    similarity_distillation_loss(student, teacher, [4, 16], listwise_weight=1.0).loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert not teacher_similarities(teacher).requires_grad


def test_minimising_the_loss_recovers_the_teacher_structure_at_low_dim():
    torch.manual_seed(0)
    teacher = torch.randn(64, 4) @ torch.randn(4, 32)  # rank-4 structure hidden in 32 dims
    student = torch.randn(64, 32, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.05)
    for _ in range(300):
        loss = similarity_distillation_loss(student, teacher, [4, 32], listwise_weight=0.0).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_dim = similarity_distillation_loss(student.detach(), teacher, [4, 32], listwise_weight=0.0).per_dim_losses
    assert per_dim.max() < 0.05, per_dim


def test_module_mixes_in_supervised_contrastive_loss():
    torch.manual_seed(0)
    student, teacher, positives = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
    plain = MatryoshkaDistillationLoss([8, 16])(student, teacher)
    mixed = MatryoshkaDistillationLoss([8, 16], contrastive_weight=0.5)(student, teacher, positives)
    sup = nested_contrastive_loss(student, positives, [8, 16], 0.05)
    torch.testing.assert_close(mixed.loss, plain.loss + 0.5 * sup.loss)
    torch.testing.assert_close(mixed.per_dim_losses, plain.per_dim_losses + 0.5 * sup.per_dim_losses)
    unused = MatryoshkaDistillationLoss([8, 16])(student, teacher, positives)
    torch.testing.assert_close(unused.loss, plain.loss)


@pytest.mark.parametrize("kwargs, match", [
    (dict(student=torch.randn(4, 8), teacher=torch.randn(5, 8)), "4 rows but teacher has 5"),
    (dict(student=torch.randn(1, 8), teacher=torch.randn(1, 8)), "at least 2"),
    (dict(student=torch.randn(4, 8), teacher=torch.randn(4, 8), nesting_list=[4, 6]), "embedding dim is 8"),
    (dict(student=torch.randn(4, 8), teacher=torch.randn(4, 8), pairwise_weight=0.0, topk_weight=0.0,
          listwise_weight=0.0),
     "all 0"),
    (dict(student=torch.randn(4, 8), teacher=torch.randn(4, 8), top_k=0), "top_k=0"),
    (dict(student=torch.randn(4, 8), teacher=torch.randn(4, 8), topk_weight=-1.0), "topk_weight=-1.0"),
    (dict(student=torch.randn(8), teacher=torch.randn(8)), r"shape \(batch, dim\)"),
])
def test_bad_input_is_rejected(kwargs, match):
    kwargs.setdefault("nesting_list", [4, 8])
    with pytest.raises(ValueError, match=match):
        similarity_distillation_loss(**kwargs)


def test_numpy_input_is_a_type_error():
    import numpy as np

    with pytest.raises(TypeError, match="torch.Tensor"):
        similarity_distillation_loss(np.zeros((4, 8)), torch.zeros(4, 8), [4, 8])


@pytest.mark.parametrize("kwargs, match", [(dict(top_k=0), "top_k=0"), (dict(pairwise_weight=-1), "pairwise_weight=-1"),
                                           (dict(listwise_temperature=0), "listwise_temperature=0"),
                                           (dict(pairwise_weight=0, topk_weight=0, listwise_weight=0), "all 0")])
def test_the_loss_module_checks_its_terms_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):  # not at the first training step
        MatryoshkaDistillationLoss([4, 8], **kwargs)
