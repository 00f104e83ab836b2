"""Run a ``SearchPlan`` in Qdrant Edge (``pip install qdrant-edge-py``): Qdrant's engine inside this process, on a
shard folder, applying the quantization and the HNSW graphs for real (qdrant-client's local mode only stores them;
see ``qdrant.py``).

``export_to_qdrant_edge`` writes the layout of ``export_to_qdrant``: ``"full"`` (the full-size vectors, on disk)
and one named vector ``"p<dim>_<precision>"`` per plan with the plan's precision as Qdrant holds it (``binary`` ->
binary quantization, ``int8`` -> scalar int8 quantization, both in RAM; ``float16`` -> ``Float16`` storage) and its
structure (``flat``: no graph, ``m=0``; ``hnsw``: the plan's ``hnsw_m``, by default the index's). ``qdrant_edge_search`` runs the plan as
Qdrant runs it on a server: a prefetch of ``plan.candidates`` on the plan's vector scored by the codes alone (no
rescoring of the quantized shortlist), then the full-size query on ``"full"``.
"""
from __future__ import annotations

import os

import numpy as np

from ..nesting import as_int
from ._inputs import check_metric, prefix
from ._rerank import worst_score
from .plan import SearchPlan, check_plan
from .qdrant import FULL, beam, check_exportable, named_plans, vector_name

_UPLOAD_ROWS = 1024


def _edge():
    try:
        import qdrant_edge
    except ImportError:
        raise ImportError("Qdrant Edge needs qdrant-edge-py: pip install qdrant-edge-py "
                          "(or pip install 'mrl-hf[qdrant]').") from None
    return qdrant_edge


def _distance(metric: str):
    qe = _edge()
    return {"cosine": qe.Distance.Cosine, "ip": qe.Distance.Dot, "l2": qe.Distance.Euclid}[metric]


def _vector_params(index, plan: SearchPlan):
    qe = _edge()
    quantization = datatype = None
    if plan.precision == "binary":
        quantization = qe.BinaryQuantizationConfig(memory=qe.Memory.Pinned)
    elif plan.precision == "int8":
        quantization = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, memory=qe.Memory.Pinned)
    elif plan.precision == "float16":
        datatype = qe.VectorStorageDatatype.Float16
    m = 0 if plan.structure == "flat" else index.code_key(plan)[4]
    hnsw = qe.HnswIndexConfig(m=m, ef_construct=index._build_params["ef_construction"],
                              full_scan_threshold=1)
    return qe.EdgeVectorParams(size=plan.dim, distance=_distance(index.metric), datatype=datatype,
                               quantization_config=quantization, hnsw_config=hnsw)


def export_to_qdrant_edge(index, path, plans):
    """Create a Qdrant Edge shard at ``path`` (a new folder) holding ``index``'s vectors for ``plans``; point ids =
    index ids. Builds the codes and graphs (``shard.optimize()``) and returns the open ``EdgeShard``; reopen it later
    with ``qdrant_edge.EdgeShard.load(path)``."""
    qe = _edge()
    plans = [check_plan(p, index.dim, index.metric, 1) for p in ([plans] if isinstance(plans, SearchPlan)
                                                                  else plans)]
    if not plans:
        raise ValueError("plans is empty; pass the SearchPlan(s) to export, e.g. [index.plan].")
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        raise ValueError(f"{path!r} is not empty; export the shard to a new folder (or remove this one first).")
    vectors = {FULL: qe.EdgeVectorParams(size=index.dim, distance=_distance(index.metric), memory=qe.Memory.Cold)}
    vectors.update({name: _vector_params(index, p) for name, p in named_plans(index, plans).items()})
    # indexing_threshold=1 KB: every segment gets its HNSW graphs, however small (Qdrant's default, 20 MB, leaves
    # small segments without them: an HNSW plan would scan its codes in full)
    shard = qe.EdgeShard.create(path, qe.EdgeConfig(vectors=vectors,
                                                    optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1)))
    db = index.embeddings
    for s in range(0, index.ntotal, _UPLOAD_ROWS):
        rows = db[s:s + _UPLOAD_ROWS]
        named = {FULL: prefix(rows, index.dim, index.metric), **{vector_name(p): prefix(rows, p.dim, index.metric)
                                                                   for p in plans}}
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(s + i, {name: v[i].tolist() for name, v in named.items()}) for i in range(len(rows))]))
    shard.optimize()
    shard.flush()
    return shard


def qdrant_edge_search(shard, queries, plan: SearchPlan, top_k: int, metric: str | None = None,
                       batch: int = 64, ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Run ``plan`` as prefetch -> rescore in a Qdrant Edge shard. Returns ``(scores, ids)`` of shape
    ``(n, top_k)``, best first; missing slots hold id -1. ``queries`` are full size.

    ``metric`` is required: the index's (``index.metric``); a shard does not report its distance, and queries
    normalised for another metric rank differently. ``ef_search``: as in ``qdrant_search``."""
    qe = _edge()
    if metric is None:
        raise ValueError("qdrant_edge_search needs metric=, the metric of the index the shard was exported from "
                         "(index.metric: 'cosine', 'ip' or 'l2'); an Edge shard does not report its distance.")
    metric = check_metric(metric)  # another string would skip the l2 squaring and the cosine normalisation
    top_k = as_int(top_k, "top_k", minimum=1)
    queries = np.asarray(queries, np.float32)
    queries = queries[None] if queries.ndim == 1 else queries
    plan = check_plan(plan, queries.shape[1], metric, top_k)
    check_exportable(plan)
    params = qe.SearchParams(hnsw_ef=beam(plan, ef_search), quantization=qe.QuantizationSearchParams(rescore=False)
                             if plan.precision in ("binary", "int8") else None)
    short, full = prefix(queries, plan.dim, metric), prefix(queries, queries.shape[1], metric)
    requests = [qe.QueryRequest(limit=top_k, query=qe.Query.Nearest(full[i].tolist(), using=FULL),
                                prefetches=[qe.Prefetch(limit=plan.candidates, params=params, query=qe.Query.Nearest(
                                    short[i].tolist(), using=vector_name(plan)))])
                for i in range(len(queries))]
    scores = np.full((len(queries), top_k), worst_score(metric), np.float32)
    ids = np.full((len(queries), top_k), -1, np.int64)
    for s in range(0, len(requests), batch):
        for i, points in enumerate(shard.query_batch(qe.QueryBatchRequest(requests[s:s + batch])), s):
            for j, point in enumerate(points):
                scores[i, j], ids[i, j] = point.score, int(point.id)
    if metric == "l2":  # Qdrant reports the Euclidean distance; MatryoshkaIndex (FAISS) scores its square
        scores = np.where(ids >= 0, np.square(scores), scores)
    return scores, ids
