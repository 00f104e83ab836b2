"""Nested (Matryoshka) losses: cross-entropy over per-dim logits, a fused MRL-E linear+CE, and InfoNCE.

Every loss returns a ``NestedLoss``: ``loss`` is ``sum_m c_m * L_m`` (Eq. 1 of the paper) and carries the
gradient; ``per_dim_losses`` holds the unweighted ``L_m`` (detached, one per nesting dim) for logging.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .nesting import validate_nesting_list, validate_relative_importance
from .quantization import (
    add_quantized_terms,
    check_quantization_options,
    quantized_similarities,
    resolve_precisions,
)


class NestedLoss(NamedTuple):
    loss: torch.Tensor
    per_dim_losses: torch.Tensor
    predictions: torch.Tensor | None = None  # (|M|, N) argmax per dim, when asked for


def weighted_sum(per_dim: torch.Tensor, relative_importance) -> torch.Tensor:
    """``sum_m c_m * per_dim[m]`` with the weights as Python numbers: no host-to-device copy on an accelerator."""
    coefs = validate_relative_importance(relative_importance, per_dim.shape[0])
    return sum(c * value for c, value in zip(coefs, per_dim.unbind(0)))


class MatryoshkaCrossEntropyLoss(nn.Module):
    """``sum_m c_m * CE(logits_m, labels)`` over a sequence of per-dim logits (the paper's Algorithm 1).

    ``logits`` of shape ``(..., num_classes)`` and ``labels`` of shape ``(...)``; ``ignore_index`` and
    ``label_smoothing`` mean what they mean in ``torch.nn.CrossEntropyLoss``. Each ``CE_m`` is the sum over labelled
    positions divided by their number, or by ``num_items_in_batch`` when given (the Trainer's count of labelled
    positions over all gradient accumulation steps and processes, as transformers' own losses take it). With no
    labelled position the loss is 0, with zero gradients. Computed in float32 whatever the logits' precision.
    """

    def __init__(self, relative_importance: Sequence[float] | None = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1].")
        self.relative_importance = None if relative_importance is None else [float(c) for c in relative_importance]
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)

    def forward(self, nested_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                num_items_in_batch: int | torch.Tensor | None = None) -> NestedLoss:
        if isinstance(nested_logits, torch.Tensor):
            raise TypeError("nested_logits must be a sequence of per-dim logit tensors (one per nesting dim), "
                            "e.g. the tuple a MatryoshkaHead returns; got a single tensor.")
        if len(nested_logits) == 0:
            raise ValueError("nested_logits is empty; pass one logits tensor per nesting dim.")
        denominator = _denominator(labels, self.ignore_index, num_items_in_batch)
        sums = []
        for i, logits in enumerate(nested_logits):
            if logits.shape[:-1] != labels.shape:
                raise ValueError(
                    f"logits at nesting index {i} have shape {tuple(logits.shape)} but labels have shape "
                    f"{tuple(labels.shape)}; logits must be labels.shape + (num_classes,)."
                )
            logits = logits.reshape(-1, logits.shape[-1])
            sums.append(F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels.reshape(-1),
                                        ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                                        reduction="sum"))
        per_dim = torch.stack(sums) / denominator
        return NestedLoss(weighted_sum(per_dim, self.relative_importance), per_dim.detach())


def _denominator(labels: torch.Tensor, ignore_index: int, num_items_in_batch) -> torch.Tensor:
    """What a summed loss is divided by: ``num_items_in_batch`` if given, else the local number of labelled
    positions (at least 1). A tensor on the labels' device: no host synchronisation."""
    if num_items_in_batch is None:
        return (labels != ignore_index).sum().clamp_min(1)
    return torch.as_tensor(num_items_in_batch, device=labels.device).clamp_min(1)


# Fused MRL-E linear + nested cross-entropy -----------------------------------------------------------

# Working buffer per chunk of rows (|M| logit blocks): cache-sized on the CPU. On an accelerator short chunks leave
# the loop's many small kernels waiting on their launches (23x Linear + CE at 128 MiB, 4x at 2 GiB on an H200,
# benchmarks/bench_head_chunks.py), so there it holds 512 MiB to 2 GiB, and beyond 512 MiB at most twice the float32
# logits of all the rows (under the plain Linear + CE's own peak memory).
_CHUNK_BYTES = {"cpu": 128 * 2**20, "accelerator": 2 * 2**30, "accelerator_floor": 512 * 2**20}


def _half_matmuls(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the block matmuls run in ``x``'s half precision (tensor cores, float32 accumulation), as an
    autocast ``nn.Linear`` does; the logits and softmax stay float32. Only on accelerators: CPUs lack fast
    half-precision matmuls."""
    return x.device.type != "cpu" and x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == x.dtype


class _NestedLinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss *and* its gradients chunk by chunk; backward only scales them.

    For a chunk of rows, ``addmm`` accumulates the block products ``x[:, a:b] @ W[:, a:b].T`` into the
    logits of every dim (a prefix sum); each is turned in place into ``softmax - onehot``; a reverse prefix
    sum weighted by ``c_m`` gives, per block, the summed gradient of every dim that uses that block; two
    block matmuls give ``dx`` and ``dW``. FLOPs: three matmuls, as for one Linear + CE; memory: one
    chunk buffer. The per-row factor ``1 / denominator`` (0 on ignored rows) is applied to the small operands
    (``x`` rows and ``dx`` rows), never to the large buffer. Nothing in the loop reads a value back to the host.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, labels, denominator, dims, coefs, ignore_index, eps, want_preds, need_dx,
                need_dw):
        with torch.autocast(device_type=x.device.type, enabled=False):
            ctype = torch.promote_types(x.dtype, torch.float32)  # logits and softmax in float32 at least
            mtype = x.dtype if _half_matmuls(x, weight) else ctype  # the block matmuls' dtype
            xm, wm = x.to(mtype), weight.to(mtype)
            b32 = bias.to(ctype) if bias is not None else None
            n_rows, num_classes = x.shape[0], weight.shape[0]
            num_dims = len(dims)
            bounds = list(zip([0, *dims[:-1]], dims))
            valid = labels != ignore_index
            row_scale = (valid.to(ctype) / denominator.to(ctype))[:, None]
            inv_denominator = 1 / denominator.to(ctype)
            safe_labels = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
            per_dim = torch.zeros(num_dims, dtype=ctype, device=x.device)
            preds = torch.empty(num_dims, n_rows if want_preds else 0, dtype=torch.long, device=x.device)
            need_db = bias is not None and bias.requires_grad
            need_grad = need_dx or need_dw or need_db
            gx = torch.empty_like(xm, dtype=ctype) if need_dx else None
            # the first chunk writes gw with beta=0, so it needs no zero fill unless there is no row at all
            gw = (torch.empty_like if n_rows else torch.zeros_like)(wm, dtype=ctype) if need_dw else None
            gb = torch.zeros_like(b32) if need_db else None
            if x.device.type == "cpu":
                chunk = max(16, _CHUNK_BYTES["cpu"] // (4 * num_dims * num_classes))
                chunk -= chunk % 64 if chunk >= 64 else 0  # whole 64-row tiles suit the CPU's block matmuls best
            else:
                chunk_bytes = min(_CHUNK_BYTES["accelerator"],
                                  max(_CHUNK_BYTES["accelerator_floor"], 2 * 4 * n_rows * num_classes))
                chunk = max(16, chunk_bytes // (4 * num_dims * num_classes))
            n_chunks = max(1, -(-n_rows // chunk))
            chunk = max(1, -(-n_rows // n_chunks))  # equal chunks: 1,000 rows as 8 x 125, not 7 x 128 + 104
            buf = torch.empty(num_dims, min(chunk, n_rows), num_classes, dtype=ctype, device=x.device)
            for r0 in range(0, n_rows, chunk):
                r1 = min(r0 + chunk, n_rows)
                xc, yc, rs, z = xm[r0:r1], safe_labels[r0:r1], row_scale[r0:r1], buf[:, : r1 - r0]
                counted = valid[r0:r1]
                for i, (a, b) in enumerate(bounds):
                    prev = z[i - 1] if i else b32
                    if mtype != ctype:  # a half-precision block product, added in float32
                        block = xc[:, a:b] @ wm[:, a:b].T
                        if prev is None:
                            z[i].copy_(block)
                        else:
                            torch.add(prev, block, out=z[i])
                    elif prev is None:
                        torch.matmul(xc[:, a:b], wm[:, a:b].T, out=z[i])
                    else:
                        torch.addmm(prev, xc[:, a:b], wm[:, a:b].T, out=z[i])
                # the rows' factor goes into x for dW; in half precision only the mask (1 / denominator could
                # underflow there) and the factor is applied to each float32 product instead
                xs = (xc * rs if mtype == ctype else xc * counted[:, None]) if need_dw else None
                # Largest dim first, so that each dim's buffer is finished while it is still in cache:
                # loss, softmax gradient, the reverse prefix sum G_i = c_i g_i + G_{i+1}, then its block matmuls.
                for i in range(num_dims - 1, -1, -1):
                    zi = z[i]
                    z_y = zi.gather(1, yc).squeeze(1)
                    z_mean = zi.mean(1) if eps else None
                    if not need_grad:  # the loss only: log-probabilities in place
                        if want_preds:
                            preds[i, r0:r1] = zi.argmax(1)
                        torch.log_softmax(zi, 1, out=zi)
                        lse = z_y - zi.gather(1, yc).squeeze(1)
                    else:
                        # Probabilities in place (one memory pass fewer than log-softmax + exp). The log-sum-exp
                        # comes from the most probable class, whose probability (>= 1 / num_classes) cannot
                        # underflow, unlike the label's: lse = z_max - log p_max, exact for every row.
                        z_max, top = zi.max(1)
                        if want_preds:
                            preds[i, r0:r1] = top
                        torch.softmax(zi, 1, out=zi)
                        lse = z_max - zi.gather(1, top[:, None]).squeeze(1).log()
                    row_loss = lse - (1 - eps) * z_y - (eps * z_mean if eps else 0)
                    per_dim[i] += torch.where(counted, row_loss, 0.0) @ rs.squeeze(1)
                    if not need_grad:
                        continue
                    zi.scatter_add_(1, yc, torch.full_like(zi[:, :1], -(1 - eps)))  # softmax - smoothed onehot
                    if eps:
                        zi.sub_(eps / num_classes)
                    if i == num_dims - 1:
                        if coefs[i] != 1:
                            zi.mul_(coefs[i])
                    else:  # block i serves dims i..|M|-1
                        torch.add(z[i + 1], zi, alpha=coefs[i], out=zi)
                    a, b = bounds[i]
                    zm = zi if mtype == ctype else zi.to(mtype)
                    if need_dx:
                        gx[r0:r1, a:b] = (zm @ wm[:, a:b]) * rs
                    if need_dw and mtype == ctype:
                        gw[:, a:b].addmm_(zi.T, xs[:, a:b], beta=0 if r0 == 0 else 1)
                    elif need_dw:
                        part = (zm.T @ xs[:, a:b]) * inv_denominator
                        if r0 == 0:
                            gw[:, a:b].copy_(part)
                        else:
                            gw[:, a:b].add_(part)
                if need_db:
                    gb.addmv_(z[0].T, rs.squeeze(1))
            total = weighted_sum(per_dim, coefs)
        ctx.save_for_backward(gx, gw, gb)
        ctx.ctype = ctype
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(per_dim, preds)
        return total, per_dim, preds  # the loss in float32 even for a half-precision model, as transformers does

    @staticmethod
    def backward(ctx, grad_total, _grad_per_dim, _grad_preds):
        scale = grad_total.to(ctx.ctype)
        # The usual loss.backward() passes 1: on CPU, skip a memory pass over the weight-sized gradient (on a GPU
        # the multiply is cheap and reading the value would force a sync).
        unit = scale.device.type == "cpu" and scale.item() == 1.0
        grads = [None if g is None else (g if unit else g * scale).to(t) for g, t in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None, None, None, None)


def nested_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    nesting_list: Sequence[int],
    relative_importance: Sequence[float] | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    return_predictions: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> NestedLoss:
    """MRL-E loss ``sum_m c_m * CE(hidden[:, :m] @ weight[:, :m].T + bias, labels)`` without materialising
    |M| logit tensors. ``hidden`` is ``(N, d)``, ``weight`` ``(num_classes, d)``, ``labels`` ``(N,)``.
    With ``return_predictions`` the result carries the argmax class per dim, shape ``(|M|, N)``.
    Rows whose label is ``ignore_index`` are skipped; each ``CE_m`` is divided by the number of the other rows, or
    by ``num_items_in_batch`` when given (as in ``MatryoshkaCrossEntropyLoss``); with no labelled row the loss is 0.
    The loss is float32 (float64 for float64 inputs) whatever the precision of ``hidden`` and ``weight``.
    """
    dims = validate_nesting_list(nesting_list, dim=weight.shape[1])
    if hidden.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must have shape (N, {weight.shape[1]}), got {tuple(hidden.shape)}.")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must have shape ({hidden.shape[0]},) to match hidden, got {tuple(labels.shape)}.")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1].")
    if labels.device.type == "cpu":  # on an accelerator the gather kernels assert instead (no host sync here)
        _check_class_ids(labels, weight.shape[0], ignore_index)
    coefs = validate_relative_importance(relative_importance, len(dims))
    grad_on = torch.is_grad_enabled()
    need_dx = grad_on and hidden.requires_grad
    need_dw = grad_on and weight.requires_grad
    total, per_dim, preds = _NestedLinearCrossEntropy.apply(
        hidden, weight, bias, labels, _denominator(labels, ignore_index, num_items_in_batch), tuple(dims),
        tuple(coefs), ignore_index, float(label_smoothing), return_predictions, need_dx, need_dw,
    )
    return NestedLoss(total, per_dim, preds if return_predictions else None)


def _check_class_ids(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    valid = labels[labels != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        bad = valid[(valid < 0) | (valid >= num_classes)][0].item()
        raise ValueError(f"label {bad} is outside 0..{num_classes - 1} (num_classes={num_classes}); "
                         f"use {ignore_index} (ignore_index) for positions without a label.")


# Nested contrastive (InfoNCE) --------------------------------------------------------------------------

def nested_cosine_similarities(a: torch.Tensor, b: torch.Tensor, nesting_list: Sequence[int],
                               eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarities of every prefix pair, ``(|M|, len(a), len(b))``; each prefix normalised on its own.

    Built from block products and prefix sums of the raw dot products and squared norms, so all |M|
    matrices cost one ``a @ b.T``. Half-precision inputs are computed in float32 (also under autocast): a
    bfloat16 squared norm of a short prefix loses too many digits.
    """
    dims = validate_nesting_list(nesting_list, dim=a.shape[-1])
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be 2-D with the same embedding size, got {tuple(a.shape)} and {tuple(b.shape)}.")
    ctype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(ctype), b.to(ctype)
    bounds = list(zip([0, *dims[:-1]], dims))
    with torch.autocast(device_type=a.device.type, enabled=False):
        raw = torch.stack([a[:, s:e] @ b[:, s:e].T for s, e in bounds]).cumsum(0)
        norm_a = torch.stack([a[:, s:e].square().sum(1) for s, e in bounds]).cumsum(0).sqrt().clamp_min(eps)
        norm_b = torch.stack([b[:, s:e].square().sum(1) for s, e in bounds]).cumsum(0).sqrt().clamp_min(eps)
        return raw / (norm_a[:, :, None] * norm_b[:, None, :])


def nested_contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    nesting_list: Sequence[int],
    temperature: float | torch.Tensor = 0.05,
    relative_importance: Sequence[float] | None = None,
    labels: torch.Tensor | None = None,
    symmetric: bool = True,
    precisions=None,
    quantization_weight: float = 1.0,
    binary_surrogate: str = "ste",
) -> NestedLoss:
    """InfoNCE at every nesting dim with in-batch negatives, each prefix L2-normalised on its own.

    ``anchors`` ``(N, d)``; ``candidates`` ``(M, d)`` with ``M >= N`` (positives, then any hard negatives);
    ``labels[i]`` is the index of anchor i's positive (default ``arange(N)``). ``symmetric`` adds the
    positive->anchor direction (as CLIP/ALIGN do) and averages the two.

    Quantisation-aware (``mrl_hf.quantization``): ``precisions`` (``["float32", "binary"]`` or
    ``{"binary": [sizes]}``) adds, at each listed size ``m``, ``quantization_weight`` times the same InfoNCE computed
    on the prefixes as they will be quantised (``binary``: sign codes, ``binary_surrogate`` ``"ste"`` or ``"tanh"``;
    ``int8``: batch-calibrated levels), to ``per_dim_losses[m]``; so ``loss = sum_m c_m * per_dim_losses[m]`` still
    holds. ``None`` or float32 alone computes exactly the float-only loss.
    """
    if anchors.shape[0] == 0:
        raise ValueError("anchors is empty; the contrastive loss needs at least one (anchor, positive) pair.")
    n = anchors.shape[0]
    if candidates.shape[0] < n and labels is None:
        raise ValueError(f"candidates has {candidates.shape[0]} rows but anchors has {n}; give one positive per "
                         "anchor (candidates[:N]) or pass labels.")
    if labels is None:
        labels = torch.arange(n, device=anchors.device)
    if isinstance(temperature, numbers.Real) and not temperature > 0:  # numpy floats too
        raise ValueError(f"temperature={temperature} must be > 0.")
    if isinstance(temperature, torch.Tensor) and temperature.device.type == "cpu" and not temperature.requires_grad \
            and not bool((temperature > 0).all()):  # a learnt or GPU temperature is not read back (no sync)
        raise ValueError(f"temperature={temperature} must be > 0.")
    sims = nested_cosine_similarities(anchors, candidates, nesting_list) / temperature
    per_dim = _info_nce(sims, labels, symmetric)

    def quantized(precision, sizes):
        return _info_nce(quantized_similarities(anchors, candidates, sizes, precision, binary_surrogate) / temperature,
                         labels, symmetric)

    per_dim = add_quantized_terms(per_dim, nesting_list, precisions, quantization_weight, quantized)
    return NestedLoss(weighted_sum(per_dim, relative_importance), per_dim.detach())


def _info_nce(sims: torch.Tensor, labels: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Mean InfoNCE per size of ``sims`` ``(|M|, N, num_candidates)`` (already divided by the temperature)."""
    num_dims, n = sims.shape[0], sims.shape[1]
    forward_ce = F.cross_entropy(sims.reshape(num_dims * n, -1), labels.repeat(num_dims), reduction="none")
    per_dim = forward_ce.view(num_dims, n).mean(1)
    if symmetric:
        back = sims[:, :, labels].transpose(1, 2)  # positives vs anchors
        target = torch.arange(n, device=sims.device).repeat(num_dims)
        back_ce = F.cross_entropy(back.reshape(num_dims * n, n), target, reduction="none")
        per_dim = (per_dim + back_ce.view(num_dims, n).mean(1)) / 2
    return per_dim


class MatryoshkaContrastiveLoss(nn.Module):
    """Module form of ``nested_contrastive_loss`` with a fixed or learnable temperature (and its quantisation-aware
    options ``precisions``, ``quantization_weight``, ``binary_surrogate``).

    A learnable temperature is stored as ``log_logit_scale = log(1 / temperature)`` (as CLIP does), so it
    stays positive; ``max_logit_scale`` caps ``1 / temperature`` (CLIP uses 100).
    """

    def __init__(self, nesting_list: Sequence[int], temperature: float = 0.05, learnable_temperature: bool = False,
                 relative_importance: Sequence[float] | None = None, symmetric: bool = True,
                 max_logit_scale: float = 100.0, precisions=None, quantization_weight: float = 1.0,
                 binary_surrogate: str = "ste"):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        if 1.0 / temperature > max_logit_scale * (1 + 1e-6):  # the cap below would replace it silently
            raise ValueError(f"temperature={temperature} is below 1 / max_logit_scale = {1.0 / max_logit_scale:g}, so "
                             f"the cap would use {1.0 / max_logit_scale:g} instead; raise max_logit_scale.")
        self.nesting_list = validate_nesting_list(nesting_list)
        self.relative_importance = (None if relative_importance is None
                                    else validate_relative_importance(relative_importance, len(self.nesting_list)))
        self.symmetric = symmetric
        self.max_logit_scale = max_logit_scale
        self.precisions = resolve_precisions(precisions, self.nesting_list)  # raises on an unknown precision
        self.quantization_weight, self.binary_surrogate = check_quantization_options(quantization_weight,
                                                                                     binary_surrogate)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, anchors: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor | None = None) -> NestedLoss:
        return nested_contrastive_loss(anchors, candidates, self.nesting_list, self.temperature,
                                       self.relative_importance, labels, self.symmetric, self.precisions,
                                       self.quantization_weight, self.binary_surrogate)
