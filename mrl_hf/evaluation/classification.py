"""Per-dim classification quality of frozen embeddings (the paper's Figures 2-3 and 5, Tables 15 and 22).

Every evaluator takes full-dim embeddings (numpy or torch, shape ``(N, d)``) and evaluates their prefixes
``x[:, :m]`` for each ``m`` in ``dims``. Baselines for a full-dim non-MRL model are expressed as *ordered
features* whose prefixes are the baseline at size m (``baseline_features``): SVD/PCA components by variance,
the model's first m features (an unordered model's features, so this is random feature selection), and a
Johnson-Lindenstrauss Gaussian projection. Results come back as a ``ResultsTable`` (accuracies in percent).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..embeddings import _check_finite, _check_finite_nested_logits, principal_axes
from ..nesting import validate_dims, validate_nesting_list
from .retrieval_metrics import as_labels
from .table import ResultsTable

BASELINES = ("SVD", "first-m", "JL")
LINEAR_PROBE = "linear probe"


# ---- inputs ----------------------------------------------------------------------------------------------

def _as_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (num_examples, dim), got shape {x.shape}.")
    x = x.astype(np.float32, copy=False)
    _check_finite(torch.from_numpy(np.ascontiguousarray(x)), name)  # a NaN row would be classified, not refused
    return x


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---- embeddings from a model -------------------------------------------------------------------------------

@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor, batch_size: int = 256, return_logits: bool = False):
    """Full-dim embeddings ``(N, d)`` (numpy) of a vision model in eval mode; with ``return_logits`` also the
    per-dim logits ``(|M|, N, num_classes)`` for ``oracle_accuracy`` and ``AdaptiveClassifier``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embeddings, logits = [], []
    try:
        for i in range(0, len(pixel_values), batch_size):
            out = model(pixel_values=pixel_values[i:i + batch_size].to(device))
            embeddings.append(out.embeddings.float().cpu())
            if return_logits:
                logits.append(torch.stack(out.nested_logits).float().cpu())
    finally:
        model.train(was_training)
    emb = torch.cat(embeddings).numpy()
    return (emb, torch.cat(logits, dim=1).numpy()) if return_logits else emb


# ---- per-dim evaluators ------------------------------------------------------------------------------------

def linear_probe_accuracy(train_x, train_y, test_x, test_y, dims: Sequence[int], max_iter: int = 300,
                          C: float = 1.0) -> dict[int, float]:
    """Top-1 accuracy (%) of a logistic-regression probe trained on each standardised prefix."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = _as_array(train_x, "train_x"), _as_array(test_x, "test_x")
    train_y = as_labels(train_y, "train_y", n=len(train_x), class_ids=True)
    test_y = as_labels(test_y, "test_y", n=len(test_x), class_ids=True)
    out = {}
    for m in validate_dims(dims, train_x.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
        probe.fit(train_x[:, :m], train_y)
        out[m] = 100.0 * float((probe.predict(test_x[:, :m]) == test_y).mean())
    return out


def knn_accuracy(database_x, database_y, query_x, query_y, dims: Sequence[int], k: int = 1,
                 metric: str = "cosine", chunk_size: int = 1024) -> dict[int, tuple[float, float]]:
    """``{m: (top-1 %, top-5 %)}`` of k-NN classification with the database's prefixes ``x[:, :m]``.

    Classes are ranked by votes among the k nearest neighbours, ties (and classes without a vote) by their
    nearest neighbour in the whole database; top-5 counts a query right if its class is among the 5 best ranked.
    ``metric``: ``"cosine"`` (each prefix L2-normalised on its own) or ``"l2"``.
    """
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric={metric!r} must be 'cosine' or 'l2'.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an int >= 1 (queries scored per pass).")
    db, q = _as_array(database_x, "database_x"), _as_array(query_x, "query_x")
    if len(q) == 0 or len(db) == 0:
        raise ValueError(f"need at least one query and one database embedding, got {len(q)} and {len(db)}.")
    db_y = as_labels(database_y, "database_y", n=len(db), class_ids=True)
    q_y = as_labels(query_y, "query_y", n=len(q), class_ids=True)
    if k > len(db):
        raise ValueError(f"k={k} is larger than the database ({len(db)} embeddings).")
    # class ids made compact (sparse or large ids would size every per-class array by the largest one)
    _, compact = np.unique(np.concatenate([db_y, q_y]), return_inverse=True)
    num_classes = int(compact.max()) + 1
    db_labels, q_labels = torch.from_numpy(compact[:len(db_y)]), torch.from_numpy(compact[len(db_y):])
    ranked = min(5, len(np.unique(db_y)))  # only classes the database holds are ranked: a query's other class misses
    out = {}
    for m in validate_dims(dims, db.shape[1]):
        a, b = db[:, :m], q[:, :m]
        if metric == "cosine":
            a, b = _normalize(a), _normalize(b)
        else:  # distances are unchanged by a shift; a large common offset would swamp them in float32
            centre = a.mean(0, dtype=np.float64).astype(np.float32)
            a, b = a - centre, b - centre
        a = torch.from_numpy(np.ascontiguousarray(a))
        b = torch.from_numpy(np.ascontiguousarray(b))
        sq_a = a.square().sum(1)
        top1 = top5 = 0
        for s in range(0, len(b), chunk_size):
            qb = b[s:s + chunk_size]
            score = qb @ a.T if metric == "cosine" else 2 * qb @ a.T - sq_a  # larger = nearer
            labels = db_labels[score.topk(k, dim=1).indices]
            votes = torch.zeros(len(qb), num_classes, dtype=torch.long).scatter_add(1, labels, torch.ones_like(labels))
            nearest = torch.full((len(qb), num_classes), -torch.inf, dtype=score.dtype).scatter_reduce(
                1, db_labels.expand_as(score), score, reduce="amax")  # each class's nearest neighbour
            place = nearest.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0: the nearest class
            class_score = votes * (num_classes + 1) + (num_classes - place)
            best = class_score.topk(ranked, dim=1).indices  # absent classes (no votes, placed last) rank below
            target = q_labels[s:s + chunk_size, None]
            top1 += int((best[:, :1] == target).sum())
            top5 += int((best == target).any(1).sum())
        out[m] = (100.0 * top1 / len(q), 100.0 * top5 / len(q))
    return out


def nearest_class_mean_accuracy(train_x, train_y, test_x, test_y, dims: Sequence[int], shots: int = 1,
                                episodes: int = 5, seed: int = 0) -> dict[int, float]:
    """Few-shot accuracy (%) per dim with nearest class means (the paper's Table 15): each episode samples
    ``shots`` training embeddings per class, averages their L2-normalised prefixes, and labels every test
    embedding by the most cosine-similar mean; the result is the mean over ``episodes``."""
    train_x, test_x = _as_array(train_x, "train_x"), _as_array(test_x, "test_x")
    train_y = as_labels(train_y, "train_y", n=len(train_x), class_ids=True)
    test_y = as_labels(test_y, "test_y", n=len(test_x), class_ids=True)
    classes = np.unique(train_y)
    smallest = min(int((train_y == c).sum()) for c in classes)
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= smallest:
        raise ValueError(f"shots={shots!r} must be an int in 1..{smallest} (the rarest class has {smallest} examples).")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be an int >= 1 (the result is the mean over episodes).")
    rng = np.random.default_rng(seed)
    supports = [np.concatenate([rng.choice(np.flatnonzero(train_y == c), shots, replace=False) for c in classes])
                for _ in range(episodes)]
    out = {}
    for m in validate_dims(dims, train_x.shape[1]):
        tr, te = _normalize(train_x[:, :m]), _normalize(test_x[:, :m])
        accs = []
        for support in supports:
            means = _normalize(tr[support].reshape(len(classes), shots, m).mean(1))
            pred = classes[(te @ means.T).argmax(1)]
            accs.append((pred == test_y).mean())
        out[m] = 100.0 * float(np.mean(accs))
    return out


def per_dim_accuracy(nested_logits, labels, nesting_list: Sequence[int]) -> dict[int, float]:
    """Top-1 accuracy (%) of each nested classifier from logits ``(|M|, N, C)``."""
    logits, labels = _nested_logits(nested_logits, labels, nesting_list)
    return {m: 100.0 * float((lg.argmax(-1) == labels).mean()) for m, lg in zip(nesting_list, logits)}


def oracle_accuracy(nested_logits, labels, nesting_list: Sequence[int]) -> dict:
    """The paper's Table 22: an input counts as right if *any* nested classifier gets it right.

    Returns ``{"oracle": %, "first_correct": {m: % of inputs first right at m}, "never_correct": %}``.
    """
    logits, labels = _nested_logits(nested_logits, labels, nesting_list)
    correct = logits.argmax(-1) == labels[None]  # (|M|, N)
    any_right = correct.any(0)
    first = np.where(any_right, correct.argmax(0), -1)
    n = len(labels)
    return {
        "oracle": 100.0 * float(any_right.mean()),
        "first_correct": {m: 100.0 * float((first == i).sum()) / n for i, m in enumerate(nesting_list)},
        "never_correct": 100.0 * float((~any_right).mean()),
    }


def _nested_logits(nested_logits, labels, nesting_list):
    validate_nesting_list(nesting_list)  # increasing: "first right at m" follows the sizes, and no size twice
    if isinstance(nested_logits, (list, tuple)):
        nested_logits = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                         for x in nested_logits]
        nested_logits = np.stack(nested_logits)
    elif isinstance(nested_logits, torch.Tensor):
        nested_logits = nested_logits.detach().cpu().numpy()
    logits = np.asarray(nested_logits)
    if logits.ndim != 3 or logits.shape[0] != len(nesting_list):
        raise ValueError(f"nested_logits must have shape (|M|={len(nesting_list)}, N, num_classes), "
                         f"got {logits.shape}.")
    if logits.dtype.kind not in "biuf":
        raise TypeError(f"nested_logits must hold numbers, got dtype {logits.dtype}.")
    _check_finite_nested_logits(torch.from_numpy(np.ascontiguousarray(logits)))  # argmax would pick a NaN's class
    return logits, as_labels(labels, "labels", n=logits.shape[1], class_ids=True, num_classes=logits.shape[2])


# ---- baselines from a full-dim (non-MRL) model ---------------------------------------------------------------

def baseline_features(baseline: str, train_x, other_x=(), seed: int = 0) -> list[np.ndarray]:
    """Ordered features of a full-dim model whose first m columns are the baseline at size m.

    ``"SVD"``: principal components fitted on ``train_x`` (centred), by decreasing variance;
    ``"first-m"``: the model's own features as they are (random feature selection for a model not trained
    to order them); ``"JL"``: a Gaussian Johnson-Lindenstrauss projection (``seed``), whose first m columns
    are an independent m-dim random projection. Returns ``[train_features, *other_features]``.
    """
    train_x = _as_array(train_x, "train_x")
    others = [_as_array(x, f"other_x[{i}]") for i, x in enumerate(other_x)]
    if baseline == "SVD":
        mean, axes = principal_axes(torch.from_numpy(train_x))
        mean, basis = mean.numpy().astype(np.float32), axes.T.numpy().astype(np.float32)
        return [((x - mean) @ basis).astype(np.float32) for x in [train_x, *others]]
    if baseline == "first-m":
        return [train_x, *others]
    if baseline == "JL":
        d = train_x.shape[1]
        proj = np.random.default_rng(seed).standard_normal((d, d)).astype(np.float32) / np.sqrt(d)
        return [x @ proj for x in [train_x, *others]]
    raise ValueError(f"baseline={baseline!r} is not known; choose one of {BASELINES}.")


# ---- tables ----------------------------------------------------------------------------------------------------

def _parse_metric(metric: str):
    if metric == LINEAR_PROBE:
        return ("probe", None)
    match = re.fullmatch(r"(\d+)-NN", metric)
    if match:
        return ("knn", int(match.group(1)))
    match = re.fullmatch(r"NCM (\d+)-shot", metric)
    if match:
        return ("ncm", int(match.group(1)))
    raise ValueError(f"metric={metric!r} is not known; use 'linear probe', 'k-NN' with a number "
                     "(e.g. '1-NN', '20-NN') or 'NCM n-shot' (e.g. 'NCM 5-shot').")


def evaluate_embeddings(train_x, train_y, test_x, test_y, dims: Sequence[int], method: str = "MRL",
                        metrics: Sequence[str] = (LINEAR_PROBE, "1-NN"), table: ResultsTable | None = None,
                        seed: int = 0) -> ResultsTable:
    """Evaluate the prefixes of one set of embeddings at ``dims`` under ``metrics`` into a ``ResultsTable``.

    Metric names: ``"linear probe"``; ``"k-NN"`` (e.g. ``"1-NN"``) adds ``"k-NN top-1"`` and ``"k-NN top-5"``,
    with the training embeddings as the database; ``"NCM n-shot"`` (e.g. ``"NCM 5-shot"``) few-shot accuracy.
    """
    table = table if table is not None else ResultsTable()
    parsed = [(name, *_parse_metric(name)) for name in metrics]  # fail early on a typo
    for name, kind, arg in parsed:
        if kind == "probe":
            for m, acc in linear_probe_accuracy(train_x, train_y, test_x, test_y, dims).items():
                table.add(method, name, m, acc)
        elif kind == "knn":
            for m, (top1, top5) in knn_accuracy(train_x, train_y, test_x, test_y, dims, k=arg).items():
                table.add(method, f"{name} top-1", m, top1)
                table.add(method, f"{name} top-5", m, top5)
        else:
            for m, acc in nearest_class_mean_accuracy(train_x, train_y, test_x, test_y, dims, shots=arg,
                                                      seed=seed).items():
                table.add(method, name, m, acc)
    return table


def evaluate_baselines(train_x, train_y, test_x, test_y, dims: Sequence[int], baselines: Sequence[str] = BASELINES,
                       metrics: Sequence[str] = (LINEAR_PROBE, "1-NN"), table: ResultsTable | None = None,
                       seed: int = 0) -> ResultsTable:
    """``evaluate_embeddings`` on each baseline's ordered features of a full-dim (non-MRL) model's embeddings."""
    table = table if table is not None else ResultsTable()
    for baseline in baselines:
        tr, te = baseline_features(baseline, train_x, [test_x], seed=seed)
        evaluate_embeddings(tr, train_y, te, test_y, dims, method=baseline, metrics=metrics, table=table, seed=seed)
    return table
