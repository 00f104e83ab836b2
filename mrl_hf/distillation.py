"""Unsupervised Matryoshka self-distillation: teach every prefix to reproduce a frozen teacher's similarities.

A pretrained encoder (the teacher) already knows which texts are alike; slicing its embedding loses that at low
dims. Instead of labels, the student (a copy of the encoder, or an adaptor on its frozen outputs) is trained so
that at every nesting dim ``m`` the cosine similarities of its ``m``-prefixes match the teacher's full-dim
cosine similarities, as Matryoshka-Adaptor (Yoon et al., EMNLP 2024) does:

* pairwise: ``mean_{i != j} |S_m[i, j] - T[i, j]|`` over the batch (global structure);
* top-k: the same distance on each row's ``top_k`` teacher neighbours only (local structure, what retrieval uses);
* listwise (optional): ``KL(softmax(T[i] / tau) || softmax(S_m[i] / tau))``, the neighbour ranking per row.

``S_m`` uses prefixes normalised on their own, ``T`` the teacher's full embeddings; student and teacher sizes may
differ. Pairs with labels can add ``nested_contrastive_loss`` on top (``contrastive_weight``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import validate_relative_importance
from .losses import NestedLoss, nested_contrastive_loss, nested_cosine_similarities
from .nesting import validate_nesting_list


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (batch, dim), got {type(x).__name__}.")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, dim), got {tuple(x.shape)}.")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student has {student.shape[0]} rows but teacher has {teacher.shape[0]}; "
                         "give the teacher embedding of each student row, in the same order.")
    if student.shape[0] < 2:
        raise ValueError(f"the batch has {student.shape[0]} row(s); similarity distillation needs at least 2.")


def teacher_similarities(teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarities of the teacher's full embeddings, ``(N, N)``, without gradient."""
    with torch.no_grad():
        t = F.normalize(teacher.float(), dim=-1, eps=eps)
        return t @ t.T


def similarity_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    nesting_list: Sequence[int],
    relative_importance: Sequence[float] | None = None,
    pairwise_weight: float = 1.0,
    topk_weight: float = 1.0,
    top_k: int = 10,
    listwise_weight: float = 0.0,
    listwise_temperature: float = 0.05,
) -> NestedLoss:
    """Per-dim similarity matching between the student's prefixes and the teacher (see the module docstring).

    ``student`` ``(N, d)`` with ``nesting_list[-1] == d``; ``teacher`` ``(N, D)`` (no gradient flows into it).
    Returns ``NestedLoss(sum_m c_m * L_m, per_dim_losses)`` where ``L_m`` is the weighted sum of the terms.
    """
    _check_pair(student, teacher)
    dims = validate_nesting_list(nesting_list, dim=student.shape[1])
    coefs = validate_relative_importance(relative_importance, len(dims))
    for name, w in (("pairwise_weight", pairwise_weight), ("topk_weight", topk_weight),
                    ("listwise_weight", listwise_weight)):
        if not w >= 0:
            raise ValueError(f"{name}={w} must be >= 0.")
    if pairwise_weight == topk_weight == listwise_weight == 0:
        raise ValueError("pairwise_weight, topk_weight and listwise_weight are all 0; set at least one > 0.")
    if not listwise_temperature > 0:
        raise ValueError(f"listwise_temperature={listwise_temperature} must be > 0.")
    n = student.shape[0]
    target = teacher_similarities(teacher).to(student.dtype)
    sims = nested_cosine_similarities(student, student, dims)  # (|M|, N, N)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=student.device)
    gap = (sims - target).abs()
    per_dim = torch.zeros(len(dims), dtype=student.dtype, device=student.device)
    if pairwise_weight:
        per_dim = per_dim + pairwise_weight * gap.masked_fill(~off_diag, 0).sum((1, 2)) / (n * (n - 1))
    if topk_weight:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be an int >= 1.")
        k = min(top_k, n - 1)
        neighbours = target.masked_fill(~off_diag, float("-inf")).topk(k, dim=1).indices  # (N, k)
        per_dim = per_dim + topk_weight * gap.gather(2, neighbours.expand(len(dims), n, k)).mean((1, 2))
    if listwise_weight:
        mask = torch.full_like(target, float("-inf")).masked_fill(off_diag, 0.0)
        p_teacher = F.softmax(target / listwise_temperature + mask, dim=1)
        log_p_student = F.log_softmax(sims / listwise_temperature + mask, dim=2)
        kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).masked_fill(~off_diag, 0)
        per_dim = per_dim + listwise_weight * kl.sum(2).mean(1)
    weights = torch.tensor(coefs, dtype=per_dim.dtype, device=per_dim.device)
    return NestedLoss((weights * per_dim).sum(), per_dim.detach())


class MatryoshkaDistillationLoss(nn.Module):
    """Module form of ``similarity_distillation_loss``, optionally mixed with a supervised nested InfoNCE.

    ``forward(student, teacher, positives=None)``: when ``positives`` (the student embeddings of each row's
    positive) are given and ``contrastive_weight > 0``, adds ``contrastive_weight * nested_contrastive_loss``.
    """

    def __init__(self, nesting_list: Sequence[int], relative_importance: Sequence[float] | None = None,
                 pairwise_weight: float = 1.0, topk_weight: float = 1.0, top_k: int = 10,
                 listwise_weight: float = 0.0, listwise_temperature: float = 0.05,
                 contrastive_weight: float = 0.0, temperature: float = 0.05):
        super().__init__()
        self.nesting_list = validate_nesting_list(nesting_list)
        self.relative_importance = (None if relative_importance is None
                                    else validate_relative_importance(relative_importance, len(self.nesting_list)))
        if not contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight={contrastive_weight} must be >= 0.")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        self.pairwise_weight, self.topk_weight, self.top_k = pairwise_weight, topk_weight, top_k
        self.listwise_weight, self.listwise_temperature = listwise_weight, listwise_temperature
        self.contrastive_weight, self.temperature = contrastive_weight, temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                positives: torch.Tensor | None = None) -> NestedLoss:
        out = similarity_distillation_loss(
            student, teacher, self.nesting_list, self.relative_importance, self.pairwise_weight,
            self.topk_weight, self.top_k, self.listwise_weight, self.listwise_temperature)
        if positives is None or not self.contrastive_weight:
            return out
        sup = nested_contrastive_loss(student, positives, self.nesting_list, self.temperature,
                                      self.relative_importance)
        return NestedLoss(out.loss + self.contrastive_weight * sup.loss,
                          out.per_dim_losses + self.contrastive_weight * sup.per_dim_losses)
