"""Qdrant Edge for real (qdrant-edge-py: Qdrant's engine in this process, on a shard folder) against MatryoshkaIndex.

Unlike qdrant-client's local mode, Edge applies the quantization and the graphs. Binary codes are the sign bits of the
normalised prefix in both, so a flat binary plan can differ from ours only where Hamming distances tie at the
shortlist's cut (the two engines keep different vectors among equals); that is what the test checks, row by row. Qdrant's
int8 ranges come from quantiles (ours from the min/max of the data), so int8 and HNSW plans are compared by top-10
overlap. Not covered: a Qdrant server or cluster (none is reachable here); qdrant.py's client code talks to those.
"""
import dataclasses

import numpy as np
import pytest
import qdrant_edge  # dev extra
from test_qdrant import clustered

from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan
from mrl_hf.retrieval.codes import sign_bits
from mrl_hf.retrieval.qdrant_edge import export_to_qdrant_edge, qdrant_edge_search

N, D, NQ = 3000, 128, 40
PLANS = [SearchPlan(128, "float32", "flat", 50), SearchPlan(32, "binary", "flat", 20),
         SearchPlan(16, "int8", "flat", 20), SearchPlan(64, "binary", "hnsw", 20, ef_search=256)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    db, queries = clustered(2, N, NQ, D)
    index = MatryoshkaIndex(db, metric="cosine")
    path = tmp_path_factory.mktemp("edge") / "shard"
    shard = export_to_qdrant_edge(index, path, PLANS)
    return index, queries, shard, path


def _normalised(x, d):
    x = x[:, :d]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_float32_plan_gives_our_ids_and_scores(setup):
    index, queries, shard, _ = setup
    scores, ids = qdrant_edge_search(shard, queries, PLANS[0], 10, metric="cosine")
    ours = index.search_plan(queries, 10, PLANS[0])
    assert (ids == ours.ids).mean() > 0.99
    np.testing.assert_allclose(scores, ours.scores, atol=1e-5)


def test_a_binary_flat_plan_differs_from_ours_only_at_hamming_ties(setup):
    index, queries, shard, _ = setup
    plan = PLANS[1]
    _, ids = qdrant_edge_search(shard, queries, plan, 10, metric="cosine")
    ours = index.search_plan(queries, 10, plan)
    db_bits = np.unpackbits(sign_bits(_normalised(index.embeddings, plan.dim)), axis=1)
    q_bits = np.unpackbits(sign_bits(_normalised(queries, plan.dim)), axis=1)
    same = 0
    for i in range(NQ):
        hamming = (db_bits != q_bits[i]).sum(1)
        cut = np.sort(hamming)[plan.candidates - 1]  # the shortlist's last Hamming distance
        # Qdrant's shortlist holds every vector closer than the cut plus some of those at it (a shortlist of exactly
        # `candidates`), so its top 10 lies within the cut, and a row can differ from ours only through a tie at it
        assert all(hamming[j] <= cut for j in ids[i]), (i, cut, hamming[ids[i]])
        differ = set(ids[i]) ^ set(ours.ids[i])
        assert not differ or any(hamming[j] == cut for j in differ), (i, cut, [hamming[j] for j in differ])
        same += not differ
    assert same >= 0.5 * NQ, same  # measured: all 40 rows identical (both keep the lowest ids among equals)
    exact = index.search_plan(queries, 10, dataclasses.replace(plan, precision="float32"))
    assert (ids != exact.ids).any(axis=1).mean() > 0.2  # the engine searched the codes, not float32 prefixes


@pytest.mark.parametrize("plan,least", [(PLANS[2], 0.95), (PLANS[3], 0.85)], ids=["int8-flat", "binary-hnsw"])
def test_int8_and_hnsw_plans_agree_with_ours(setup, plan, least):
    """Measured top-10 overlap: 0.97 (int8: quantile vs min/max ranges), 0.90 (binary HNSW: two graphs, many ties)."""
    index, queries, shard, _ = setup
    _, ids = qdrant_edge_search(shard, queries, plan, 10, metric="cosine")
    ours = index.search_plan(queries, 10, plan)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ours.ids)])
    assert overlap >= least, overlap


def test_bad_input_names_the_fix(setup, tmp_path):
    index, queries, shard, path = setup
    with pytest.raises(ValueError, match="structure='hnsw'"):
        export_to_qdrant_edge(index, tmp_path / "ivf", [SearchPlan(64, "int8", "ivf", 50)])
    with pytest.raises(ValueError, match="not empty"):
        export_to_qdrant_edge(index, path, PLANS[:1])
    with pytest.raises(ValueError, match="both need the named vector 'p32_binary'"):
        export_to_qdrant_edge(index, tmp_path / "twice", [PLANS[1], dataclasses.replace(PLANS[1], structure="hnsw")])
    with pytest.raises(ValueError, match="both need the named vector 'p32_binary', as hnsw M=8 and as hnsw M=32"):
        export_to_qdrant_edge(index, tmp_path / "graphs", [dataclasses.replace(PLANS[1], structure="hnsw", hnsw_m=8),
                                                           dataclasses.replace(PLANS[1], structure="hnsw")])
    with pytest.raises(ValueError, match="plans is empty"):
        export_to_qdrant_edge(index, tmp_path / "none", [])


def test_the_shard_reopens_from_its_folder_with_the_same_results(setup):
    """Last in this file: it closes the fixture's shard."""
    _, queries, shard, path = setup
    before = qdrant_edge_search(shard, queries, PLANS[1], 10, metric="cosine")[1]
    shard.close()
    reopened = qdrant_edge.EdgeShard.load(str(path))
    try:
        np.testing.assert_array_equal(qdrant_edge_search(reopened, queries, PLANS[1], 10, metric="cosine")[1],
                                      before)
    finally:
        reopened.close()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_other_metrics_give_our_ids_and_scores_in_our_units(metric, tmp_path):
    """Qdrant reports the Euclidean distance; qdrant_edge_search gives its square, as MatryoshkaIndex does."""
    db, queries = clustered(3, 300, 5, 32)
    index = MatryoshkaIndex(db, metric=metric)
    plan = SearchPlan(16, "float32", "flat", 400)
    shard = export_to_qdrant_edge(index, tmp_path / "shard", [plan])
    scores, ids = qdrant_edge_search(shard, queries, plan, 10, metric=metric)
    ours = index.search_plan(queries, 10, plan)
    np.testing.assert_array_equal(ids, ours.ids)
    np.testing.assert_allclose(scores, ours.scores, rtol=1e-5, atol=1e-5)


def test_a_plan_without_ef_search_runs_with_the_index_beam_and_metric_is_required(tmp_path):
    """A plan whose ef_search is None runs in MatryoshkaIndex with index.ef_search; in Qdrant it ran with the
    export's ef_construct (the index's ef_construction, here 16). Small graphs (M=4) make the beam matter."""
    db, queries = clustered(4, N, 200, 32)
    index = MatryoshkaIndex(db, metric="cosine", ef_construction=16, ef_search=200)
    plan = SearchPlan(32, "int8", "hnsw", 10, hnsw_m=4)
    shard = export_to_qdrant_edge(index, tmp_path / "shard", [plan])
    try:
        def ids(p, **kwargs):
            return qdrant_edge_search(shard, queries, p, 10, metric="cosine", **kwargs)[1]

        np.testing.assert_array_equal(ids(plan), ids(dataclasses.replace(plan, ef_search=64)))  # the default
        as_tuned = ids(plan, ef_search=index.ef_search)
        np.testing.assert_array_equal(as_tuned, ids(dataclasses.replace(plan, ef_search=200)))
        assert (as_tuned != ids(dataclasses.replace(plan, ef_search=16))).any(1).sum() > 10  # what it ran before
        with pytest.raises(ValueError, match=r"needs metric=.*index.metric"):
            qdrant_edge_search(shard, queries, plan, 10)
        # an unknown name skipped the l2 squaring and the cosine normalisation: other scores, no error
        with pytest.raises(ValueError, match=r"metric='L2' is not supported; choose one of \('cosine', 'ip', 'l2'\)"):
            qdrant_edge_search(shard, queries, plan, 10, metric="L2")
    finally:
        shard.close()
