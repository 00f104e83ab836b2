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
