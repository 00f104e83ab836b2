"""Slicing Matryoshka embeddings to a prefix, the one operation every deployment path uses."""
from __future__ import annotations

import numpy as np
import torch

from .nesting import validate_dim


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
    if isinstance(embeddings, torch.Tensor):
        return torch.nn.functional.normalize(embeddings, p=2, dim=-1, eps=eps)
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
