"""Checks and helpers of the index: metrics, prefixes (the matrix check is ``mrl_hf.embeddings.as_float32_matrix``)."""
from __future__ import annotations

import numpy as np

from ..embeddings import truncate_embeddings

METRICS = ("cosine", "ip", "l2")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; choose one of {METRICS} "
                         "('cosine' normalises each prefix on its own, as Matryoshka embeddings expect).")
    return metric


def prefix(x: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """The first ``dim`` features of each row, L2-normalised on their own when ``metric='cosine'``."""
    out = truncate_embeddings(x, dim, normalize=metric == "cosine")
    return np.ascontiguousarray(out, dtype=np.float32)
