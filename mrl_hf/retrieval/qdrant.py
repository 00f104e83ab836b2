"""Run a ``SearchPlan`` in Qdrant: named vectors per prefix/precision, then a prefetch -> full-dim rescore query.

The same client code talks to an embedded engine (``QdrantClient(":memory:")`` or ``QdrantClient(path=...)``)
and to a server or cluster (``QdrantClient(url=...)``). ``export_to_qdrant`` creates a collection with

- ``"full"``: the full-size vectors, ``on_disk=True`` (what the final rescore reads);
- one named vector per plan, ``"p<dim>_<precision>"``: the plan's prefixes (normalised for cosine), with the
  plan's precision as Qdrant holds it: ``binary`` -> binary quantization, ``int8`` -> scalar int8 quantization
  (both kept in RAM), ``float16`` -> ``datatype=float16``; ``structure="flat"`` disables the HNSW graph of that
  vector (``m=0``: full scan), ``"hnsw"`` builds one with the plan's ``hnsw_m`` (default: the index's). Qdrant has no IVF.

``qdrant_search`` sends one ``query_points`` per query (batched): a ``Prefetch`` of ``plan.candidates`` on the
plan's vector, without rescoring the quantized shortlist, then the full-size query on ``"full"``.

Local mode (qdrant-client's embedded engine) does exact float32 brute-force search: it accepts the
quantization, datatype and HNSW settings but does not apply them (it warns that ``search_params`` have no
effect). Its prefetch is therefore an exact float32 shortlist at the plan's dim, whatever the precision; a
Qdrant server applies the quantization.
"""
from __future__ import annotations

import numpy as np

from ..nesting import as_int
from ._inputs import prefix
from ._rerank import worst_score
from .plan import SearchPlan, check_plan

FULL = "full"
_UPLOAD_ROWS = 1024


def _models():
    try:
        from qdrant_client import models
    except ImportError:
        raise ImportError("Exporting to Qdrant needs qdrant-client: pip install qdrant-client "
                          "(or pip install 'mrl-hf[qdrant]').") from None
    return models


def vector_name(plan: SearchPlan) -> str:
    return f"p{plan.dim}_{plan.precision}"


def _distance(metric: str):
    m = _models()
    return {"cosine": m.Distance.COSINE, "ip": m.Distance.DOT, "l2": m.Distance.EUCLID}[metric]


def _collection_metric(client, collection: str, metric: str | None, queries: np.ndarray) -> str:
    """The metric ``collection`` was exported with (its ``"full"`` vector's distance); a different ``metric`` is
    refused: normalising the queries for the wrong one changes the ranking without an error. Queries must have the
    full vector's size (plans re-rank at the full size)."""
    full = client.get_collection(collection).config.params.vectors[FULL]
    stored = {_distance(k): k for k in ("cosine", "ip", "l2")}[full.distance]
    if metric is not None and metric != stored:
        raise ValueError(f"metric={metric!r}, but Qdrant collection {collection!r} was exported with metric "
                         f"{stored!r} (distance {full.distance}); leave metric=None to use the collection's.")
    if queries.shape[1] != full.size:
        raise ValueError(f"queries have {queries.shape[1]} dims but Qdrant collection {collection!r} holds "
                         f"{full.size}-dim vectors; pass full-size ({full.size}-dim) queries: plans re-rank at the "
                         "full size.")
    return stored


def beam(plan: SearchPlan, ef_search) -> int | None:
    """``hnsw_ef`` for Qdrant: the plan's ``ef_search``, else ``ef_search`` (the index's), not Qdrant's default
    (its ``ef_construct``), so a plan runs with the beam it was tuned with."""
    return plan.ef_search if plan.ef_search is not None else as_int(ef_search, "ef_search", minimum=1)


def check_exportable(plan: SearchPlan) -> None:
    """Qdrant (server, local mode or Edge) has flat and HNSW search, no IVF, and no 4-bit scalar or PQ codes."""
    if plan.precision == "int4":
        raise ValueError(f"{plan.describe()}: Qdrant has no 4-bit scalar quantization; export the plan with "
                         "precision='int8' or 'binary' (e.g. dataclasses.replace(plan, precision='int8')).")
    if plan.precision == "pq4":
        raise ValueError(f"{plan.describe()}: Qdrant's product quantization has no 4-bit fast-scan codes of feature "
                         "pairs (its codes and scores are not these); export the plan with precision='int8' or "
                         "'binary' (e.g. dataclasses.replace(plan, precision='int8', structure='hnsw')).")
    if plan.precision == "binary-asymmetric":
        raise ValueError(f"{plan.describe()}: the export keeps Qdrant's binary quantization as Qdrant scores it; "
                         "export the plan with precision='binary' (e.g. dataclasses.replace(plan, "
                         "precision='binary', structure='hnsw')).")
    if plan.structure == "ivf":
        fix = "structure='hnsw'" + (", cluster_dim=None" if plan.cluster_dim is not None else "") + (
            ", spill=False" if plan.spill else "")
        raise ValueError(f"{plan.describe()}: Qdrant has no IVF structure; export the plan with structure='hnsw' "
                         f"or 'flat' (e.g. dataclasses.replace(plan, {fix})).")


def named_plans(index, plans) -> dict[str, SearchPlan]:
    """The named vector each plan searches in ``index``'s export; two plans may share one only if they build it
    the same way."""
    named: dict[str, SearchPlan] = {}
    for plan in plans:
        check_exportable(plan)
        other = named.setdefault(vector_name(plan), plan)
        if index.code_key(other) != index.code_key(plan):
            graphs = [f"{p.structure} M={index.code_key(p)[4]}" if p.structure == "hnsw" else p.structure
                      for p in (other, plan)]
            raise ValueError(f"{other.describe()} and {plan.describe()} both need the named vector "
                             f"{vector_name(plan)!r}, as {graphs[0]} and as {graphs[1]}; export them to two "
                             "collections (or shards), or give both the same structure.")
    return named


def _vector_params(index, plan: SearchPlan):
    m = _models()
    quantization = datatype = None
    if plan.precision == "binary":
        quantization = m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True))
    elif plan.precision == "int8":
        quantization = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8,
                                                                              always_ram=True))
    elif plan.precision == "float16":
        datatype = m.Datatype.FLOAT16
    hnsw = m.HnswConfigDiff(m=0 if plan.structure == "flat" else index.code_key(plan)[4],
                            ef_construct=index._build_params["ef_construction"])
    return m.VectorParams(size=plan.dim, distance=_distance(index.metric), hnsw_config=hnsw,
                          quantization_config=quantization, datatype=datatype)


def export_to_qdrant(index, client, collection: str, plans) -> list[str]:
    """Create ``collection`` in ``client`` holding ``index``'s vectors for ``plans``; point ids = index ids.

    An existing collection of that name is an error (delete it first, or pick another name). Returns the
    named vectors created.
    """
    m = _models()
    plans = [check_plan(p, index.dim, index.metric, 1) for p in ([plans] if isinstance(plans, SearchPlan)
                                                                  else plans)]
    if not plans:
        raise ValueError("plans is empty; pass the SearchPlan(s) to export, e.g. [index.plan].")
    if client.collection_exists(collection):
        raise ValueError(f"Qdrant collection {collection!r} already exists; delete it with "
                         f"client.delete_collection({collection!r}) or export under another name.")
    names = {name: _vector_params(index, p) for name, p in named_plans(index, plans).items()}
    config = {FULL: m.VectorParams(size=index.dim, distance=_distance(index.metric), on_disk=True), **names}
    client.create_collection(collection, vectors_config=config)
    db = index.embeddings
    for s in range(0, index.ntotal, _UPLOAD_ROWS):
        rows = db[s:s + _UPLOAD_ROWS]
        vectors = {FULL: prefix(rows, index.dim, index.metric).tolist()}
        for p in plans:
            vectors[vector_name(p)] = prefix(rows, p.dim, index.metric).tolist()
        client.upsert(collection, points=m.Batch(ids=list(range(s, s + len(rows))), vectors=vectors), wait=True)
    return [FULL, *names]


def qdrant_search(client, collection: str, queries, plan: SearchPlan, top_k: int, metric: str | None = None,
                  batch: int = 64, ef_search: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Run ``plan`` as prefetch -> rescore in Qdrant. Returns ``(scores, ids)`` of shape ``(n, top_k)``, best
    first; missing slots hold id -1. ``queries`` are full size, as for ``MatryoshkaIndex.search_plan``.

    ``metric``: ``None`` reads the collection's (the index's at export); another is refused. ``ef_search``: the HNSW
    beam of a plan whose own ``ef_search`` is ``None``, as ``MatryoshkaIndex`` runs it with ``index.ef_search``
    (64 by default; pass yours if you changed it)."""
    m = _models()
    top_k = as_int(top_k, "top_k", minimum=1)
    queries = np.asarray(queries, np.float32)
    queries = queries[None] if queries.ndim == 1 else queries
    metric = _collection_metric(client, collection, metric, queries)
    plan = check_plan(plan, queries.shape[1], metric, top_k)
    check_exportable(plan)  # an IVF plan would run on the same-named flat vector, an int4 one on none
    params = m.SearchParams(hnsw_ef=beam(plan, ef_search),
                            quantization=m.QuantizationSearchParams(rescore=False)
                            if plan.precision in ("binary", "int8") else None)
    requests = [m.QueryRequest(prefetch=m.Prefetch(query=prefix(q[None], plan.dim, metric)[0].tolist(),
                                                   using=vector_name(plan), limit=plan.candidates, params=params),
                               query=prefix(q[None], q.shape[0], metric)[0].tolist(), using=FULL, limit=top_k)
                for q in queries]
    scores = np.full((len(queries), top_k), worst_score(metric), np.float32)
    ids = np.full((len(queries), top_k), -1, np.int64)
    for s in range(0, len(requests), batch):
        for i, response in enumerate(client.query_batch_points(collection, requests=requests[s:s + batch]), s):
            for j, point in enumerate(response.points):
                scores[i, j], ids[i, j] = point.score, int(point.id)
    if metric == "l2":  # Qdrant reports the Euclidean distance; MatryoshkaIndex (FAISS) scores its square
        scores = np.where(ids >= 0, np.square(scores), scores)
    return scores, ids
