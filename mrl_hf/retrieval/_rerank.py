"""Re-ranking a shortlist: gather the candidates' prefixes from the stored embeddings and score them exactly."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._inputs import prefix

_GATHER_FLOATS = 2**20  # floats gathered per chunk of queries: 4 MiB, small enough to stay in cache for the matmul


def worst_score(metric: str) -> np.float32:
    return np.float32(np.inf if metric == "l2" else -np.inf)


def prefix_norms(database: np.ndarray, dim: int) -> np.ndarray:
    """L2 norm of every row's first ``dim`` features (floored at 1e-12, as ``truncate_embeddings`` does)."""
    out = np.empty(database.shape[0], np.float32)
    for s in range(0, database.shape[0], 65536):
        out[s:s + 65536] = np.linalg.norm(database[s:s + 65536, :dim], axis=1)
    return np.maximum(out, np.float32(1e-12))


def rerank(database: np.ndarray, queries: np.ndarray, candidates: np.ndarray, dim: int, metric: str,
           keep: int, norms: np.ndarray | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """Score ``candidates`` (ids, -1 = empty slot) at ``dim`` and keep the best ``keep`` per query.

    For ``cosine``, ``norms`` (from ``prefix_norms``) saves normalising the gathered rows. ``threads`` > 1 splits
    the queries between that many threads (numpy releases the GIL while gathering rows and multiplying).
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

    def score_block(s: int, e: int) -> None:
        rows = database[safe[s:e].ravel(), :dim].reshape(e - s, k, dim)
        if metric == "l2":
            diff = rows - q[s:e, None, :]
            scores = np.einsum("qkd,qkd->qk", diff, diff)
        else:
            scores = np.matmul(rows, q[s:e, :, None])[..., 0]
        if metric == "cosine":
            row_norms = (norms[safe[s:e]] if norms is not None
                         else np.maximum(np.linalg.norm(rows, axis=2), np.float32(1e-12)))
            scores /= row_norms
        scores[~valid[s:e]] = worst_score(metric)
        order = np.argsort(scores if metric == "l2" else -scores, axis=1, kind="stable")[:, :keep]
        out_scores[s:e] = np.take_along_axis(scores, order, 1)
        out_ids[s:e] = np.take_along_axis(candidates[s:e], order, 1)

    chunk = max(1, _GATHER_FLOATS // max(k * dim, 1))
    blocks = [(s, min(n_q, s + chunk)) for s in range(0, n_q, chunk)]
    if threads > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(min(threads, len(blocks))) as pool:
            list(pool.map(lambda block: score_block(*block), blocks))
    else:
        for block in blocks:
            score_block(*block)
    return out_scores, out_ids, float(valid.sum()) / max(n_q, 1)
