"""Re-ranking a shortlist: gather the candidates' prefixes from the stored embeddings and score them exactly."""
from __future__ import annotations

import numpy as np

from ._inputs import prefix

_GATHER_FLOATS = 2**23  # floats gathered per chunk of queries: 32 MiB


def worst_score(metric: str) -> np.float32:
    return np.float32(np.inf if metric == "l2" else -np.inf)


def rerank(database: np.ndarray, queries: np.ndarray, candidates: np.ndarray, dim: int, metric: str,
           keep: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Score ``candidates`` (ids, -1 = empty slot) at ``dim`` and keep the best ``keep`` per query.

    Returns (scores, ids, mean number of candidates scored per query). Empty slots sort last, keep id -1
    and get the worst possible score. Equal scores keep the shortlist's order (stable sort).
    """
    n_q, k = candidates.shape
    keep = min(keep, k)
    q = prefix(queries, dim, metric)
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    out_scores = np.empty((n_q, keep), np.float32)
    out_ids = np.empty((n_q, keep), np.int64)
    chunk = max(1, _GATHER_FLOATS // max(k * dim, 1))
    for s in range(0, n_q, chunk):
        e = min(n_q, s + chunk)
        rows = database[safe[s:e].ravel(), :dim].reshape(e - s, k, dim)
        if metric == "cosine":
            rows /= np.maximum(np.linalg.norm(rows, axis=2, keepdims=True), np.float32(1e-12))
        if metric == "l2":
            diff = rows - q[s:e, None, :]
            scores = np.einsum("qkd,qkd->qk", diff, diff)
        else:
            scores = np.matmul(rows, q[s:e, :, None])[..., 0]
        scores[~valid[s:e]] = worst_score(metric)
        order = np.argsort(scores if metric == "l2" else -scores, axis=1, kind="stable")[:, :keep]
        out_scores[s:e] = np.take_along_axis(scores, order, 1)
        out_ids[s:e] = np.take_along_axis(candidates[s:e], order, 1)
    return out_scores, out_ids, float(valid.sum()) / max(n_q, 1)
