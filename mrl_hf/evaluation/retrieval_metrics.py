"""Retrieval metrics per Matryoshka dim: 1-NN accuracy, P@k, mAP@k, nn_recall@k and top-k overlap.

Label metrics (``top1``, ``P@k``, ``mAP@k``) judge a neighbour relevant when its database label equals
the query's label, as the paper's image retrieval does (Appendix E). Reference metrics (``nn_recall@k``,
``overlap@k``) compare a ranking with exact full-dim search. Neighbour ids of -1 (slots an approximate
index could not fill) count as not relevant.

mAP@k used here::

    AP@k(q) = 1 / min(k, R_q) * sum_{i <= k} P@i(q) * rel_i(q)        mAP@k = mean_q AP@k(q)

with ``rel_i`` = 1 if the i-th neighbour is relevant, ``P@i`` the precision of the first i neighbours and
``R_q`` the number of relevant items in the database. The paper's code (RAIVNLab/MRL,
``retrieval/compute_metrics.py``) divides by ``k``; that equals ours whenever every query has at least k
relevant items (true for its ImageNet classes and for Fashion-MNIST). Dividing by ``min(k, R_q)`` keeps a
perfect ranking at 1.0 when a class has fewer than k members, and does not reward a ranking for relevant
items it failed to put first, as dividing by the number of hits would. A query with ``R_q = 0`` scores 0.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_KS = (10, 25, 50, 100)


def _as_ids(ids, name: str = "ids") -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer numpy array or tensor of shape (n_queries, k), "
                        f"got {type(ids).__name__}{'' if not hasattr(ids, 'dtype') else ' of ' + str(ids.dtype)}.")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (n_queries, k), got {tuple(ids.shape)}.")
    return ids.astype(np.int64, copy=False)


def as_labels(labels, name: str, n: int | None = None, class_ids: bool = False,
              num_classes: int | None = None) -> np.ndarray:
    """``labels`` (list, numpy array or tensor; shape ``(n,)`` or ``(n, 1)``) as a 1-D numpy array, with ``n`` rows
    when given; ``class_ids=True``: integer class ids, as ``int64``, in ``0..num_classes - 1`` when that is given
    (the columns of the logits they index)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or (n is not None and len(labels) != n) or (
            class_ids and not np.issubdtype(labels.dtype, np.integer)):
        wanted = f"{n if n is not None else 'n'} {'integer class ids' if class_ids else 'labels'}"
        raise ValueError(f"{name} must be {wanted}, one per row (shape ({n if n is not None else 'n'},)), got shape "
                         f"{tuple(labels.shape)}, dtype {labels.dtype}.")
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be class indices in 0..{num_classes - 1} (one per logit column), got values in "
                         f"{labels.min()}..{labels.max()}; map the labels to 0-based class indices.")
    return labels.astype(np.int64) if class_ids else labels


def _check_k(ids: np.ndarray, k: int, name: str = "ids") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}.")
    if k > ids.shape[1]:
        raise ValueError(f"{name} hold {ids.shape[1]} neighbours per query but k={k}; search with top_k >= {k}.")
    return int(k)


def relevance(ids, query_labels, database_labels) -> np.ndarray:
    """Boolean ``(n_queries, k)``: does neighbour j of query i share the query's label? (-1 ids: False)."""
    ids = _as_ids(ids)
    q = as_labels(query_labels, "query_labels")
    db = as_labels(database_labels, "database_labels")
    if q.shape[0] != ids.shape[0]:
        raise ValueError(f"query_labels has {q.shape[0]} labels but ids has {ids.shape[0]} rows (one per query).")
    if ids.size and ids.max() >= db.shape[0]:
        raise ValueError(f"ids refer to database row {ids.max()} but database_labels has only {db.shape[0]} labels.")
    valid = ids >= 0
    return valid & (db[np.where(valid, ids, 0)] == q[:, None])


def top1_accuracy(ids, query_labels, database_labels) -> float:
    """1-NN accuracy: the share of queries whose nearest neighbour has the query's label."""
    return float(relevance(_as_ids(ids)[:, :1], query_labels, database_labels)[:, 0].mean())


def _relevant_once(ids: np.ndarray, query_labels, database_labels) -> np.ndarray:
    """``relevance``, with an id that a row repeats counted in its first slot only (AP could exceed 1)."""
    return relevance(ids, query_labels, database_labels) & ~_repeats(ids)


def precision_at_k(ids, query_labels, database_labels, k: int) -> float:
    """P@k: relevant neighbours among the first k, divided by k, averaged over queries (a repeated id counts once)."""
    ids = _as_ids(ids)
    k = _check_k(ids, k)
    return float(_relevant_once(ids[:, :k], query_labels, database_labels).mean())


def average_precision_at_k(ids, query_labels, database_labels, k: int) -> np.ndarray:
    """AP@k per query (see the module docstring for the definition; a repeated id counts once)."""
    ids = _as_ids(ids)
    k = _check_k(ids, k)
    rel = _relevant_once(ids[:, :k], query_labels, database_labels)
    q = as_labels(query_labels, "query_labels")
    values, counts = np.unique(as_labels(database_labels, "database_labels"), return_counts=True)
    pos = np.clip(np.searchsorted(values, q), 0, len(values) - 1)
    n_relevant = np.where(values[pos] == q, counts[pos], 0)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    summed = (precision_at_i * rel).sum(axis=1)
    denom = np.minimum(k, n_relevant)
    return np.where(denom > 0, summed / np.maximum(denom, 1), 0.0)


def mean_average_precision_at_k(ids, query_labels, database_labels, k: int) -> float:
    """mAP@k: the mean of ``average_precision_at_k`` over queries."""
    return float(average_precision_at_k(ids, query_labels, database_labels, k).mean())


def _repeats(ids: np.ndarray) -> np.ndarray:
    """Where a row repeats an id it already holds in an earlier slot (a set counts it once)."""
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids stay in slot order: the first is not a repeat
    ranked = np.take_along_axis(ids, order, axis=1)
    out = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(out, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    return out


def top_k_overlap(ids, reference_ids, k: int) -> float:
    """|first k of ids ∩ first k of reference_ids| / k, averaged over queries (k-recall@k of ANN papers); an id
    repeated in a row counts once."""
    ids, ref = _as_ids(ids), _as_ids(reference_ids, "reference_ids")
    k = _check_k(ids, k)
    _check_k(ref, k, "reference_ids")
    if ids.shape[0] != ref.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} rows but reference_ids has {ref.shape[0]}; pass one row per query.")
    found = 0
    for s in range(0, ids.shape[0], 1024):  # chunks bound the (chunk, k, k) comparison
        a, b = ids[s:s + 1024, :k], ref[s:s + 1024, :k]
        hit = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).any(axis=2)
        found += int((hit & ~_repeats(a)).sum())
    return found / (k * max(ids.shape[0], 1))


def tie_aware_overlap(ids, scores, reference_ids, reference_scores, k: int, metric: str = "cosine",
                      tol: float = 1e-5) -> float:
    """``top_k_overlap`` that counts a returned id whose exact score ties the reference's k-th (within ``tol``,
    relative) as found, as ann-benchmarks does: among equal vectors, exact search and a plan may keep different
    copies, and that is no lost recall. ``scores`` must be exact (re-ranked) scores; l2 scores are distances."""
    if metric not in ("cosine", "ip", "l2"):
        raise ValueError(f"metric={metric!r} must be 'cosine', 'ip' (similarities) or 'l2' (distances).")
    ids, ref = _as_ids(ids), _as_ids(reference_ids, "reference_ids")
    k = _check_k(ids, k)
    _check_k(ref, k, "reference_ids")
    scores, ref_scores = np.asarray(scores, np.float64)[:, :k], np.asarray(reference_scores, np.float64)
    if ids.shape[0] != ref.shape[0] or scores.shape != ids[:, :k].shape or len(ref_scores) != len(ref):
        raise ValueError(f"ids {ids.shape}, scores {scores.shape}, reference_ids {ref.shape} and reference_scores "
                         f"{ref_scores.shape} must have one row per query.")
    if np.isnan(scores).any() or np.isnan(ref_scores[:, :k]).any():
        raise ValueError("scores and reference_scores hold NaN; pass the exact scores of the returned ids (-inf / inf "
                         "for empty slots).")
    kth = ref_scores[:, k - 1:k]
    margin = tol * np.maximum(1.0, np.abs(kth))
    as_good = scores <= kth + margin if metric == "l2" else scores >= kth - margin
    listed = (ids[:, :k, None] == ref[:, None, :k]).any(axis=2)
    found = ((listed | as_good) & (ids[:, :k] >= 0) & ~_repeats(ids[:, :k])).sum(axis=1)
    return float(np.minimum(found, k).sum() / (k * max(ids.shape[0], 1)))


def nn_recall_at_k(ids, reference_ids, k: int) -> float:
    """Share of queries whose exact nearest neighbour (``reference_ids[:, 0]``) is among the first k ids
    (not IR recall, which counts every relevant item: hence the name)."""
    ids, ref = _as_ids(ids), _as_ids(reference_ids, "reference_ids")
    k = _check_k(ids, k)
    if ids.shape[0] != ref.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} rows but reference_ids has {ref.shape[0]}; pass one row per query.")
    return float(((ids[:, :k] == ref[:, :1]) & (ref[:, :1] >= 0)).any(axis=1).mean())  # -1: an empty slot


def retrieval_metrics(ids, query_labels=None, database_labels=None, ks=DEFAULT_KS, reference_ids=None) -> dict:
    """All metrics for one ranking: ``top1``, ``mAP@k``, ``P@k`` (with labels) and ``nn_recall@k``, ``overlap@k``
    (with ``reference_ids``, e.g. the ids of exact full-dim search), for every k in ``ks``.
    """
    ids = _as_ids(ids)
    if (query_labels is None) != (database_labels is None):
        raise ValueError("pass both query_labels and database_labels (or neither).")
    if query_labels is None and reference_ids is None:
        raise ValueError("nothing to measure: pass labels (for top1/mAP/P@k) and/or reference_ids "
                         "(for recall/overlap).")
    out = {}
    if query_labels is not None:
        out["top1"] = top1_accuracy(ids, query_labels, database_labels)
        for k in ks:
            out[f"mAP@{k}"] = mean_average_precision_at_k(ids, query_labels, database_labels, k)
        for k in ks:
            out[f"P@{k}"] = precision_at_k(ids, query_labels, database_labels, k)
    if reference_ids is not None:
        for k in ks:
            out[f"nn_recall@{k}"] = nn_recall_at_k(ids, reference_ids, k)
        for k in ks:
            out[f"overlap@{k}"] = top_k_overlap(ids, reference_ids, k)
    return out


def evaluate_retrieval_per_dim(database, queries, query_labels=None, database_labels=None, dims=None,
                               ks=DEFAULT_KS, metric: str = "cosine", backend: str = "auto") -> dict:
    """``retrieval_metrics`` of exact single-shot search at each dim in ``dims`` (default: halving from full).

    ``database`` is an ``(n, d)`` array/tensor or a ``MatryoshkaIndex``. ``nn_recall@k`` and ``overlap@k``
    compare each dim with exact search at the full dim. Returns ``{dim: {metric_name: value}}``.
    """
    from ..retrieval import MatryoshkaIndex

    index = database if isinstance(database, MatryoshkaIndex) else MatryoshkaIndex(database, metric=metric,
                                                                                  backend=backend)
    if dims is None:  # the full dim, then halves down to 8
        dims, d = [index.dim], index.dim // 2
        while d >= 8:
            dims.append(d)
            d //= 2
        dims = sorted(dims)
    top_k = max(ks)
    if top_k > index.ntotal:
        raise ValueError(f"ks={tuple(ks)} asks for {top_k} neighbours but the database holds {index.ntotal} vectors; "
                         f"choose ks <= {index.ntotal}.")
    reference = index.search(queries, top_k, exact=True).ids
    results = {}
    for d in dims:
        ids = reference if d == index.dim else index.search(queries, top_k, dim=d, exact=True).ids
        results[int(d)] = retrieval_metrics(ids, query_labels, database_labels, ks, reference)
    return results
