"""Slicing Matryoshka embeddings to a prefix, the one operation every deployment path uses, and the one check of an
embedding matrix that the index, the metrics and the adaptor share."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .nesting import validate_dim

_FINITE_CHECK_ROWS = 65536  # rows per block when locating NaN/inf, to bound the temporary bool array


def as_float32_matrix(x, name: str, allow_1d: bool = False, as_tensor: bool = False):
    """``x`` (a numpy array or torch tensor of floats) as a float32 matrix ``(n, dim)``: a C-contiguous numpy array,
    or with ``as_tensor=True`` a detached tensor on ``x``'s own device (numpy input: a CPU tensor).

    Raises ``TypeError`` for other types or non-float dtypes and ``ValueError`` for a wrong shape or for rows that
    hold NaN or inf (naming the bad rows).
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floats, got a tensor of {x.dtype}; convert with {name}.float().")
        tensor = x.detach().to(torch.float32)
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floats, got a numpy array of {x.dtype}; "
                            f"convert with {name}.astype(np.float32).")
        tensor = numpy_view(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor of float32, got {type(x).__name__}; "
                        "convert with np.asarray(..., dtype=np.float32).")
    if tensor.dim() == 1 and allow_1d:
        tensor = tensor[None, :]
    if tensor.dim() != 2:
        expected = "(n, dim) or (dim,)" if allow_1d else "(n, dim)"
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(tensor.shape)}; reshape a single "
                         "vector with x[None, :].")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}: embeddings need at least one dimension.")
    _check_finite(tensor, name)
    return tensor if as_tensor else np.ascontiguousarray(tensor.cpu().numpy())


def numpy_view(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)`` without torch's warning for a read-only array (a memory map, an index's
    embeddings): the tensor is only read, so no copy is needed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_finite(x: torch.Tensor, name: str) -> None:
    # One float64 sum is cheap and cannot overflow from float32 inputs (float64 ones near its maximum can: then the
    # rows are searched and none is bad); only if it is not finite are the bad rows located.
    if x.numel() == 0 or torch.isfinite(x.sum(dtype=torch.float64)):
        return
    bad = torch.cat([start + (~torch.isfinite(block).all(1)).nonzero().flatten()
                     for start, block in zip(range(0, x.shape[0], _FINITE_CHECK_ROWS), x.split(_FINITE_CHECK_ROWS))])
    if len(bad) == 0:  # float64 values near its maximum overflowed the sum; every value is finite
        return
    shown = ", ".join(str(i) for i in bad[:5].tolist())
    raise ValueError(f"{name} has NaN or inf values in row(s) {shown}{' ...' if len(bad) > 5 else ''} ({len(bad)} "
                     f"row(s) in all, first at row {bad[0].item()}); remove, repair or re-encode those vectors.")


def _check_finite_nested_logits(logits: torch.Tensor, name: str = "nested_logits") -> None:
    """``_check_finite`` for ``(|M|, N, C)`` logits, naming the inputs (axis 1), without copying them."""
    if logits.shape[1] == 0:
        raise ValueError(f"{name} holds no inputs (shape {tuple(logits.shape)}); give at least one row.")
    if logits.numel() == 0 or torch.isfinite(logits.sum(dtype=torch.float64)):
        return
    bad = (~torch.isfinite(logits)).any(-1).any(0).nonzero().flatten()
    if len(bad) == 0:  # float64 values near its maximum overflowed the sum
        return
    shown = ", ".join(str(i) for i in bad[:5].tolist())
    raise ValueError(f"{name} has NaN or inf values for input(s) {shown}{' ...' if len(bad) > 5 else ''} ({len(bad)} "
                     f"in all); remove or repair those inputs (a NaN logit would be taken for a class).")


def truncate_embeddings(embeddings, dim: int | None, normalize: bool = False, eps: float = 1e-12):
    """Keep the first ``dim`` features of each embedding, then optionally L2-normalise the prefix.

    The order matters: slice first, normalise second. Normalising the full vector and then slicing gives
    prefixes whose norms depend on the discarded features.

    Works on ``torch.Tensor`` and ``numpy.ndarray`` of shape ``(..., d)`` and returns the same type.
    ``dim=None`` keeps all ``d`` features.
    """
    if not isinstance(embeddings, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"embeddings must be a torch.Tensor or numpy.ndarray, got {type(embeddings).__name__}; "
            "convert with torch.as_tensor(...) or np.asarray(...)."
        )
    if embeddings.ndim == 0:
        raise ValueError("embeddings is a scalar; expected shape (..., dim).")
    full = embeddings.shape[-1]
    if dim is not None:
        validate_dim(dim, full, name="dim")
        embeddings = embeddings[..., :dim]
    if not normalize:
        return embeddings
    # half precision is normalised in float32: a float16 norm overflows past 65504 (a squared sum of a few hundred
    # features of ~10) and the eps floor rounds to 0, so a zero prefix would give NaN
    if isinstance(embeddings, torch.Tensor):
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            return torch.nn.functional.normalize(embeddings.float(), p=2, dim=-1, eps=eps).to(embeddings.dtype)
        return torch.nn.functional.normalize(embeddings, p=2, dim=-1, eps=eps)
    if embeddings.dtype == np.float16:
        return truncate_embeddings(embeddings.astype(np.float32), None, True, eps).astype(np.float16)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, eps)


def principal_axes(x: torch.Tensor, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of the rows of ``x`` (float64): ``(mean, axes)`` with ``axes`` of shape (dim, dim), one principal axis
    per row, largest variance first; ``mean`` is zeros when ``center=False``."""
    x = x.double()
    mean = x.mean(0) if center else torch.zeros_like(x[0])
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ascending eigenvalues
    return mean, vectors.flip(1).T


def inner_products(queries, candidates):
    """``queries @ candidates.T`` (numpy arrays or tensors, in their dtype) in which identical candidate rows score
    exactly alike. A BLAS product rounds a row's dot products differently depending on where the row sits, so two
    copies of one vector could rank apart, by position, where a tie rule (or "ties by corpus order") says they tie.
    Repeated rows are looked for by a hash of their leading features (most candidate sets have none: then it is the
    plain product); where one may repeat, each distinct row is scored once. An evaluation tool: inputs that require
    a gradient (which must reach every copy), and dtypes other than real numbers, get the plain product."""
    if candidates.ndim != 2 or len(candidates) < 2 or candidates.shape[1] == 0:
        return queries @ candidates.T
    if isinstance(candidates, torch.Tensor):
        if candidates.requires_grad or getattr(queries, "requires_grad", False) or candidates.is_complex():
            return queries @ candidates.T
        lead = candidates[:, :_HASHED_FEATURES].detach().cpu()
        if not _may_repeat((lead.float() if lead.dtype == torch.bfloat16 else lead).numpy()):
            return queries @ candidates.T
        values = candidates.detach()
        _, inverse = torch.unique(values + 0 if values.is_floating_point() else values, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(values), device=values.device).scatter_reduce(
            0, inverse, torch.arange(len(values), device=values.device), reduce="amin")
        return (queries @ candidates[first].T)[:, inverse]
    values = np.asarray(candidates)
    if values.dtype.kind not in "fiub" or not _may_repeat(values[:, :_HASHED_FEATURES]):
        return queries @ candidates.T
    _, first, inverse = np.unique(np.ascontiguousarray(_plus_zero(values)), axis=0, return_index=True,
                                  return_inverse=True)
    return (queries @ values[first].T)[:, inverse.reshape(-1)]


_HASHED_FEATURES = 64  # leading features read by the row hash: rows that differ there differ


def _plus_zero(x: np.ndarray) -> np.ndarray:
    """-0.0 + 0 is 0.0: rows that differ only there score alike, and compare alike after this."""
    return x + x.dtype.type(0) if x.dtype.kind == "f" else x


def _may_repeat(lead: np.ndarray) -> bool:
    """Whether two rows of ``lead`` (the candidates' leading features, real numbers) hash alike; if none do, no row
    repeats."""
    lead = np.ascontiguousarray(_plus_zero(lead))
    bits = lead.astype(np.uint64) if lead.dtype.kind == "b" else lead.view(f"u{lead.dtype.itemsize}").astype(np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, size=lead.shape[1], dtype=np.uint64) | np.uint64(1)
    return np.unique(bits @ weights).size < len(lead)  # the sum wraps modulo 2**64, which a hash may
