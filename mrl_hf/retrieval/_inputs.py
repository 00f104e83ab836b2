"""Input checks shared by the index and the metrics: float32 matrices, finite values, ints, prefixes."""
from __future__ import annotations

import numpy as np
import torch

from ..embeddings import truncate_embeddings

METRICS = ("cosine", "ip", "l2")
_FINITE_CHECK_ROWS = 65536  # rows per block when locating NaN/inf, to bound the temporary bool array


def as_float32_matrix(x, name: str, allow_1d: bool = False) -> np.ndarray:
    """``x`` (numpy array or torch tensor of floats) as a C-contiguous float32 array of shape (n, dim).

    Raises ``TypeError`` for other types or non-float dtypes and ``ValueError`` for a wrong shape or for
    rows that hold NaN or inf (naming the first bad rows).
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must hold floats, got a tensor of {x.dtype}; convert with {name}.float().")
        x = x.detach().to("cpu", torch.float32).numpy()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floats, got a numpy array of {x.dtype}; "
                            f"convert with {name}.astype(np.float32).")
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor of float32, got {type(x).__name__}; "
                        "convert with np.asarray(..., dtype=np.float32).")
    if x.ndim == 1 and allow_1d:
        x = x[None, :]
    if x.ndim != 2:
        expected = "(n, dim) or (dim,)" if allow_1d else "(n, dim)"
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(x.shape)}.")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: embeddings need at least one dimension.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(x, name)
    return x


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the rows of ``x`` that contain NaN or inf."""
    # One float64 sum is cheap and cannot overflow from float32 inputs; only if it is not finite do we
    # pay for locating the bad rows.
    if x.size == 0 or np.isfinite(x.sum(dtype=np.float64)):
        return
    bad = []
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        block = x[start:start + _FINITE_CHECK_ROWS]
        bad.extend((start + np.flatnonzero(~np.isfinite(block).all(axis=1))).tolist())
        if len(bad) >= 5:
            break
    shown = ", ".join(str(i) for i in bad[:5])
    raise ValueError(f"{name} has NaN or inf values in row(s) {shown}{' ...' if len(bad) > 5 else ''}; "
                     "remove or repair those vectors before indexing or searching.")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; choose one of {METRICS} "
                         "('cosine' normalises each prefix on its own, as Matryoshka embeddings expect).")
    return metric


def prefix(x: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """The first ``dim`` features of each row, L2-normalised on their own when ``metric='cosine'``."""
    out = truncate_embeddings(x, dim, normalize=metric == "cosine")
    return np.ascontiguousarray(out, dtype=np.float32)
