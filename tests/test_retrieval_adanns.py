"""AdANNS-IVF plans (``SearchPlan(cluster_dim=...)``): lists clustered and routed at one prefix, scanned at another.

Each structure is checked against a numpy re-implementation of the same search from its own centroids.
"""
import faiss
import numpy as np
import pytest
from faiss.contrib.inspect_tools import get_invlist
from test_retrieval_plans import matryoshka_like

from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan

N, D, NQ, NLIST = 4000, 128, 60, 32


@pytest.fixture(scope="module")
def data():
    return matryoshka_like(N, NQ, dim=D, n_clusters=40)


@pytest.fixture(scope="module")
def index(data):
    return MatryoshkaIndex(data[0], metric="cosine", nlist=NLIST)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def list_of_each_vector(ivf) -> np.ndarray:
    owner = np.full(ivf.ntotal, -1)
    for lst in range(ivf.nlist):
        owner[get_invlist(ivf.invlists, lst)[0]] = lst
    assert (owner >= 0).all()
    return owner


def test_float_adanns_equals_routing_at_cluster_dim_and_scanning_at_dim(index, data):
    x, q = data
    plan = SearchPlan(64, "float32", "ivf", candidates=30, nprobe=4, cluster_dim=16)
    result = index.search_plan(q, 10, plan)
    ivf = index._code_level(plan).index
    padded = ivf.quantizer.reconstruct_n(0, NLIST)
    assert not padded[:, 16:].any()  # the quantizer holds the 16-dim centroids, zero-padded to 64
    centroids = padded[:, :16]
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, rtol=1e-5)  # spherical k-means at 16 dims

    # every vector sits in the list nearest to its normalised 16-dim prefix
    np.testing.assert_array_equal(list_of_each_vector(ivf), (unit(x[:, :16]) @ centroids.T).argmax(1))

    # a query probes the 4 lists nearest its 16-dim prefix, shortlists 30 at 64 dims, re-ranks at 128
    owner = list_of_each_vector(ivf)
    probed = np.argsort(-(unit(q[:, :16]) @ centroids.T), axis=1)[:, :4]
    for i in range(NQ):
        members = np.flatnonzero(np.isin(owner, probed[i]))
        s64 = unit(x[members, :64]) @ unit(q[i:i + 1, :64])[0]
        shortlist = members[np.argsort(-s64, kind="stable")[:30]]
        full = unit(x[shortlist]) @ unit(q[i:i + 1])[0]
        np.testing.assert_array_equal(result.ids[i], shortlist[np.argsort(-full, kind="stable")[:10]])

    # routing costs 16-dim dot products: 32 centroids count as 32 * 16 / 64 = 8 vectors scored at 64 dims
    plain = index.search_plan(q, 10, SearchPlan(64, "float32", "ivf", candidates=30, nprobe=4))
    members_scored = result.cost.stages[0].scored_per_query - NLIST * 16 / 64
    assert members_scored == pytest.approx(4 / NLIST * N)
    assert plain.cost.stages[0].scored_per_query == pytest.approx(4 / NLIST * N + NLIST)
    assert result.cost.stages[0].index_type == "ivf@16-float32"


def test_int8_adanns_keeps_codes_not_residuals(index, data):
    plan = SearchPlan(64, "int8", "ivf", candidates=40, nprobe=NLIST, cluster_dim=16)
    ivf = faiss.extract_index_ivf(index._code_level(plan).index)
    assert not ivf.by_residual
    # probing every list scans every code: the same shortlist as a flat int8 scan at 64 dims
    flat = index.search_plan(data[1], 10, SearchPlan(64, "int8", "flat", candidates=40))
    adanns = index.search_plan(data[1], 10, plan)
    assert (adanns.ids == flat.ids).mean() >= 0.99  # int8 ranges are calibrated per structure; near-ties may swap


def test_binary_adanns_routes_by_hamming_distance_at_cluster_dim(index, data):
    x, q = data
    plan = SearchPlan(64, "binary", "ivf", candidates=N, nprobe=NLIST, cluster_dim=16)
    level = index._code_level(plan)
    ivf = level.index
    codes = faiss.vector_to_array(faiss.downcast_IndexBinary(ivf.quantizer).xb).reshape(NLIST, 8)
    assert not codes[:, 2:].any()  # 16 sign bits of each centroid, zero-padded to 64
    bits = np.unpackbits(np.packbits(x[:, :16] > 0, axis=1), axis=1)[:, :16]
    centroid_bits = np.unpackbits(codes[:, :2], axis=1)
    hamming = (bits[:, None, :] != centroid_bits[None]).sum(-1)
    owner = list_of_each_vector(ivf)
    # each vector is in a list at the least Hamming distance (ties may go to any of them)
    np.testing.assert_array_equal(hamming[np.arange(N), owner], hamming.min(1))
    # probing every list with every vector as a candidate is exact search
    np.testing.assert_array_equal(index.search_plan(q, 10, plan).ids, index.search(q, 10, exact=True).ids)


def test_adanns_codes_and_plan_survive_save_and_load(index, data, tmp_path):
    q = data[1]
    plans = [SearchPlan(64, "int8", "ivf", candidates=50, nprobe=4, cluster_dim=16),
             SearchPlan(64, "binary", "ivf", candidates=50, nprobe=4, cluster_dim=32),
             SearchPlan(64, "int8", "ivf", candidates=50, nprobe=4)]
    before = [index.search_plan(q, 10, p).ids for p in plans]
    index.plan = plans[0]
    index.save(tmp_path / "ix")
    loaded = MatryoshkaIndex.load(tmp_path / "ix", mmap=True)
    assert loaded.plan == plans[0]
    assert {"ivf@16-int8@64", "ivf@32-binary@64", "ivf-int8@64"} <= set(loaded.memory_bytes())
    for plan, ids in zip(plans, before):
        assert loaded.code_key(plan) in loaded._codes  # loaded, not rebuilt
        np.testing.assert_array_equal(loaded.search_plan(q, 10, plan).ids, ids)


def test_tuner_tries_adanns_structures(index, data):
    result = index.tune(data[1], target_recall=0.9, dims=[64], precisions=["int8"], structures=["ivf"],
                        cluster_dims=[None, 16, 64], nprobe=[4], candidates=[50])
    tried = {r.plan.cluster_dim for r in result.reports}
    assert tried == {None, 16}  # 64 is not below dim 64, so it is left out
    assert "ivf@16 (nprobe=4)" in result.table()


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=64, structure="hnsw", cluster_dim=16), r"cluster_dim sets the prefix size .* needs structure='ivf'"),
    (dict(dim=64, structure="ivf", cluster_dim=64), r"cluster_dim must be smaller than dim .*use cluster_dim=None"),
    (dict(dim=64, precision="binary", structure="ivf", cluster_dim=12), r"multiple of 8; use cluster_dim=8"),
    (dict(dim=64, structure="ivf", cluster_dim=0), r"cluster_dim"),
])
def test_bad_cluster_dims_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchPlan(**kwargs)
