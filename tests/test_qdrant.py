"""Qdrant for real (qdrant-client's embedded local mode, no mocks) against MatryoshkaIndex's plans.

Local mode scores exactly in float32: it stores the quantization/datatype/HNSW settings but does not apply
them. So a float32 plan must give our ids exactly; for int8/float16/binary plans Qdrant's shortlist is the
exact float32 one at the plan's dim, and ours comes from the codes: the top 10 must agree on every query whose
Qdrant top 10 lies inside our code shortlist (the only way they can differ is a neighbour our codes missed).
"""
import faiss  # noqa: F401  (dev extra)
import numpy as np
import pytest
import qdrant_client  # dev extra

from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan  # noqa: E402
from mrl_hf.retrieval.qdrant import export_to_qdrant, qdrant_search, vector_name  # noqa: E402

N, D, NQ = 2000, 128, 30
PLANS = [SearchPlan(32, "float32", "flat", 50), SearchPlan(64, "binary", "hnsw", 100, ef_search=128),
         SearchPlan(64, "int8", "flat", 30), SearchPlan(32, "float16", "hnsw", 50)]


def clustered(seed: int, n: int, n_queries: int, d: int):
    """``n`` database rows and ``n_queries`` queries drawn around 40 centres, per-dim scale 1/sqrt(j)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    centres = rng.standard_normal((40, d), dtype=np.float32) * scale
    draw = lambda m: centres[rng.integers(0, 40, m)] + 0.5 * rng.standard_normal((m, d), dtype=np.float32) * scale
    return draw(n), draw(n_queries)


@pytest.fixture(scope="module")
def setup():
    db, queries = clustered(1, N, NQ, D)
    index = MatryoshkaIndex(db, metric="cosine")
    client = qdrant_client.QdrantClient(":memory:")
    names = export_to_qdrant(index, client, "mrl", PLANS)
    return index, queries, client, names


def test_export_creates_named_vectors_per_prefix_and_precision(setup):
    index, _, client, names = setup
    assert names == ["full", "p32_float32", "p64_binary", "p64_int8", "p32_float16"]
    info = client.get_collection("mrl")
    assert info.points_count == N
    vectors = info.config.params.vectors
    assert vectors["full"].size == D and vectors["full"].on_disk
    assert vectors["p64_binary"].size == 64 and vectors["p64_binary"].quantization_config.binary is not None
    assert vectors["p64_int8"].quantization_config.scalar.type == "int8"
    assert vectors["p32_float16"].datatype == "float16"


def test_float32_plan_gives_our_ids_and_scores(setup):
    index, queries, client, _ = setup
    plan = PLANS[0]
    scores, ids = qdrant_search(client, "mrl", queries, plan, 10)
    ours = index.search_plan(queries, 10, plan)
    np.testing.assert_array_equal(ids, ours.ids)
    np.testing.assert_allclose(scores, ours.scores, atol=1e-5)


@pytest.mark.parametrize("plan", PLANS[1:], ids=vector_name)
def test_quantized_plans_differ_only_where_our_codes_missed_a_neighbour(setup, plan):
    index, queries, client, _ = setup
    _, ids = qdrant_search(client, "mrl", queries, plan, 10)
    ours = index.search_plan(queries, 10, plan)
    shortlist, _ = index._code_level(plan).search(queries, plan.candidates, plan.ef_search or 64, 16)
    inside = np.array([set(ids[i]) <= set(shortlist[i]) for i in range(NQ)])
    same = (ids == ours.ids).all(axis=1)
    assert (same | ~inside).all()  # every disagreement is a Qdrant neighbour outside our code shortlist
    assert same.mean() >= 0.7


def test_embedded_on_disk_mode_persists(setup, tmp_path):
    index, queries, _, _ = setup
    plan = PLANS[0]
    client = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))
    export_to_qdrant(index, client, "mrl", [plan])
    client.close()
    reopened = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))
    _, ids = qdrant_search(reopened, "mrl", queries[:5], plan, 10)
    reopened.close()
    np.testing.assert_array_equal(ids, index.search_plan(queries[:5], 10, plan).ids)


def test_bad_exports_raise_clear_errors(setup):
    index, _, client, _ = setup
    with pytest.raises(ValueError, match=r"Qdrant has no IVF structure; export the plan with structure='hnsw'"):
        export_to_qdrant(index, client, "other", [SearchPlan(64, "int8", "ivf", 50)])
    with pytest.raises(ValueError, match=r"replace\(plan, structure='hnsw', cluster_dim=None\)"):  # AdANNS-IVF
        export_to_qdrant(index, client, "other", [SearchPlan(64, "int8", "ivf", 50, cluster_dim=16)])
    with pytest.raises(ValueError, match=r"replace\(plan, structure='hnsw', spill=False\)"):  # spilled IVF
        export_to_qdrant(index, client, "other", [SearchPlan(64, "int8", "ivf", 50, spill=True)])
    with pytest.raises(ValueError, match=r"Qdrant has no 4-bit scalar quantization; export the plan with precision="):
        export_to_qdrant(index, client, "other", [SearchPlan(64, "int4", "hnsw", 50)])
    with pytest.raises(ValueError, match=r"Qdrant's product quantization has no 4-bit fast-scan codes"):
        export_to_qdrant(index, client, "other", [SearchPlan(64, "pq4", "flat", 50)])
    with pytest.raises(ValueError, match=r"export the plan with precision='binary'"):
        export_to_qdrant(index, client, "other", [SearchPlan(64, "binary-asymmetric", "flat", 50)])
    with pytest.raises(ValueError, match=r"collection 'mrl' already exists"):
        export_to_qdrant(index, client, "mrl", [PLANS[0]])
    with pytest.raises(ValueError, match=r"dim=256, but the index stores 128-dim vectors"):
        export_to_qdrant(index, client, "other", [SearchPlan(256, "int8")])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_other_metrics_give_our_ids_and_scores_in_our_units(metric):
    """Qdrant reports the Euclidean distance; MatryoshkaIndex scores the squared one (as FAISS does), and so does
    qdrant_search. Slots a short result leaves empty hold id -1 and the worst score (+inf for l2)."""
    db, queries = clustered(3, 300, 5, 32)
    index = MatryoshkaIndex(db, metric=metric)
    client = qdrant_client.QdrantClient(":memory:")
    plan = SearchPlan(16, "float32", "flat", 400)
    export_to_qdrant(index, client, "m", [plan])
    scores, ids = qdrant_search(client, "m", queries, plan, 10, metric=metric)
    ours = index.search_plan(queries, 10, plan)
    np.testing.assert_array_equal(ids, ours.ids)
    np.testing.assert_allclose(scores, ours.scores, rtol=1e-4, atol=1e-4)
    client.delete(collection_name="m", points_selector=list(range(3, 300)))
    scores, ids = qdrant_search(client, "m", queries[:1], plan, 5, metric=metric)
    assert (ids[0, 3:] == -1).all() and np.isinf(scores[0, 3:]).all()
    assert (scores[0, 3:] > 0).all() == (metric == "l2")


def test_the_metric_comes_from_the_collection_and_unexportable_plans_are_refused():
    """Without metric=, cosine was assumed: an l2 collection was searched with normalised queries (other ids)."""
    db, queries = clustered(3, 300, 5, 32)
    index = MatryoshkaIndex(db, metric="l2")
    client = qdrant_client.QdrantClient(":memory:")
    plan = SearchPlan(16, "float32", "flat", 400)
    export_to_qdrant(index, client, "m", [plan])
    np.testing.assert_array_equal(qdrant_search(client, "m", queries, plan, 10)[1], index.search_plan(
        queries, 10, plan).ids)
    with pytest.raises(ValueError, match="metric='cosine', but Qdrant collection 'm' was exported with metric 'l2'"):
        qdrant_search(client, "m", queries, plan, 10, metric="cosine")
    with pytest.raises(ValueError, match="Qdrant has no IVF structure"):  # ran on the flat vector of the same name
        qdrant_search(client, "m", queries, SearchPlan(16, "float32", "ivf", 400, nprobe=2), 10)
    # queries cut to the plan's size were read as the index's width and failed inside the engine with a numpy error
    with pytest.raises(ValueError, match=r"queries have 24 dims but Qdrant collection 'm' holds 32-dim vectors; "
                                         r"pass full-size \(32-dim\) queries"):
        qdrant_search(client, "m", queries[:, :24], plan, 10)
