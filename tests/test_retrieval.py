"""MatryoshkaIndex: results against a numpy brute force, backend agreement, persistence, cost, bad input."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrl_hf.retrieval import MatryoshkaIndex, SearchCost, SearchResult, StageCost, default_funnel_steps

METRICS = ["cosine", "ip", "l2"]
N, D, NQ = 600, 64, 12


def backends():
    out = ["torch"]
    try:
        import faiss  # noqa: F401
        out.append("faiss")
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    scale = (1.0 / np.sqrt(np.arange(1, D + 1))).astype(np.float32)  # low dims carry more variance
    db = rng.standard_normal((N, D), dtype=np.float32) * scale
    queries = rng.standard_normal((NQ, D), dtype=np.float32) * scale
    return db, queries


# -- numpy reference ----------------------------------------------------------------------------------
def ref_scores(db, queries, dim, metric):
    """Higher is better for every metric (l2: negative squared distance); float64 for a clean reference."""
    a, b = db[:, :dim].astype(np.float64), queries[:, :dim].astype(np.float64)
    if metric == "cosine":
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    if metric == "l2":
        return -((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    return b @ a.T


def ref_funnel(db, queries, steps, top_k, metric):
    first_dim, first_k = steps[0]
    ids = np.argsort(-ref_scores(db, queries, first_dim, metric), axis=1, kind="stable")[:, :first_k]
    for dim, keep in steps[1:]:
        full = ref_scores(db, queries, dim, metric)
        s = np.take_along_axis(full, ids, 1)
        ids = np.take_along_axis(ids, np.argsort(-s, axis=1, kind="stable")[:, :keep], 1)
    return ids[:, :top_k]


def to_reference_scores(scores, metric):
    return -scores if metric == "l2" else scores


# -- correctness against the reference ----------------------------------------------------------------
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("metric", METRICS)
def test_search_at_every_dim_matches_numpy(data, backend, metric):
    db, queries = data
    index = MatryoshkaIndex(db, metric=metric, backend=backend)
    for dim in (8, 16, 40, None):
        scores, ids = index.search(queries, 10, dim=dim)
        d = dim or D
        full = ref_scores(db, queries, d, metric)
        expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_allclose(to_reference_scores(scores, metric), np.take_along_axis(full, ids, 1),
                                   rtol=1e-4, atol=1e-4)
        assert scores.shape == ids.shape == (NQ, 10) and scores.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("metric", METRICS)
def test_adaptive_search_matches_numpy(data, backend, metric):
    db, queries = data
    index = MatryoshkaIndex(db, metric=metric, backend=backend)
    for shortlist_dim, rerank_dim, shortlist_k in [(8, None, 50), (16, 32, 20), (4, 64, 200)]:
        scores, ids = index.adaptive_search(queries, 10, shortlist_dim, rerank_dim, shortlist_k)
        steps = [(shortlist_dim, shortlist_k), (rerank_dim or D, 10)]
        np.testing.assert_array_equal(ids, ref_funnel(db, queries, steps, 10, metric))
        expected = np.take_along_axis(ref_scores(db, queries, rerank_dim or D, metric), ids, 1)
        np.testing.assert_allclose(to_reference_scores(scores, metric), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("metric", METRICS)
def test_funnel_search_matches_numpy(data, backend, metric):
    db, queries = data
    index = MatryoshkaIndex(db, metric=metric, backend=backend)
    default = default_funnel_steps(D, 10)
    assert default == [(16, 200), (32, 100), (64, 10)]
    for steps in (None, [(4, 300), (8, 120), (8, 60), (32, 30), (64, 15)]):
        _, ids = index.funnel_search(queries, 10, steps=steps)
        np.testing.assert_array_equal(ids, ref_funnel(db, queries, steps or default, 10, metric))


@pytest.mark.parametrize("backend", backends())
def test_shortlists_longer_than_the_database_cover_all_of_it(data, backend):
    db, queries = data
    small = MatryoshkaIndex(db[:50], backend=backend).build(np.int64(8))
    assert small.built_dims == [8]
    exact = small.search(queries, 10).ids
    np.testing.assert_array_equal(small.adaptive_search(queries, 10, 8).ids, exact)  # default shortlist 200 > 50
    np.testing.assert_array_equal(small.funnel_search(queries, 10).ids, exact)
    assert small.adaptive_search(queries, 10, 8).cost.stages[1].scored_per_query == 50


def test_default_funnel_is_the_papers():
    assert default_funnel_steps(2048) == [(16, 200), (32, 100), (64, 50), (128, 25), (256, 10), (2048, 10)]
    assert default_funnel_steps(768, top_k=40) == [(16, 200), (32, 100), (64, 50), (128, 40), (256, 40),
                                                   (768, 40)]
    assert default_funnel_steps(16) == [(16, 10)]


@pytest.mark.parametrize("backend", backends())
def test_each_prefix_is_normalised_on_its_own(backend):
    # At dim 2, b points exactly along the query; a is 3 degrees off. b's huge tail (dim 3) would make it
    # lose if the full vector were normalised before slicing.
    db = np.array([[1.0, 0.0, 0.0, 0.0], [2.0, 0.1, 10.0, 0.0]], np.float32)
    query = np.array([[1.0, 0.05, 0.0, 0.0]], np.float32)
    scores, ids = MatryoshkaIndex(db, metric="cosine", backend=backend).search(query, 2, dim=2)
    assert ids[0].tolist() == [1, 0]
    np.testing.assert_allclose(scores[0, 0], 1.0, atol=1e-6)


def test_faiss_and_torch_backends_agree(data):
    pytest.importorskip("faiss")
    db, queries = data
    for metric in METRICS:
        a = MatryoshkaIndex(db, metric=metric, backend="faiss")
        b = MatryoshkaIndex(db, metric=metric, backend="torch")
        for run in (lambda i: i.search(queries, 20, dim=24), lambda i: i.adaptive_search(queries, 10, 8),
                    lambda i: i.funnel_search(queries, 5)):
            (sa, ia), (sb, ib) = run(a), run(b)
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_l2_search_is_exact_on_vectors_with_a_large_common_part(backend):
    """|q|^2 - 2 q.x + |x|^2 in float32 lost the digits of close vectors far from the origin: the torch backend's
    recall@10 was 0.34 here. It now stores rows shifted by their mean (rows added later too)."""
    rng = np.random.default_rng(0)
    offset = 10 * rng.standard_normal(64)
    db = (offset + 0.01 * rng.standard_normal((2000, 64))).astype(np.float32)
    q = (offset + 0.01 * rng.standard_normal((20, 64))).astype(np.float32)
    index = MatryoshkaIndex(db[:1000], metric="l2", backend=backend)
    index.build(64)
    index.add(db[1000:])
    found = index.search(q, 10, dim=64)
    exact = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    expected = np.argsort(exact, 1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.ids, expected)]) == 1.0
    np.testing.assert_allclose(found.scores, np.take_along_axis(exact, expected, 1), rtol=1e-3, atol=1e-6)


def test_approximate_indexes_match_exact_when_searched_exhaustively(data):
    pytest.importorskip("faiss")
    db, queries = data
    exact = MatryoshkaIndex(db, backend="faiss").adaptive_search(queries, 10, 16, shortlist_k=100).ids
    ivf = MatryoshkaIndex(db, backend="faiss", index_type="ivf", nlist=8, nprobe=8)  # every list probed
    np.testing.assert_array_equal(ivf.adaptive_search(queries, 10, 16, shortlist_k=100).ids, exact)
    hnsw = MatryoshkaIndex(db, backend="faiss", index_type="hnsw", ef_search=N)
    found = hnsw.adaptive_search(queries, 10, 16, shortlist_k=100).ids
    assert np.mean([len(set(f) & set(e)) for f, e in zip(found, exact)]) >= 9.9
    # exact=True ignores the approximate structure, and keeps the exact one it builds for the next call
    coarse = MatryoshkaIndex(db, backend="faiss", index_type="ivf", nlist=16, nprobe=1)
    flat_ids = MatryoshkaIndex(db, backend="faiss").search(queries, 10).ids
    np.testing.assert_array_equal(coarse.search(queries, 10, exact=True).ids, flat_ids)
    assert not np.array_equal(coarse.search(queries, 10).ids, flat_ids)
    assert set(coarse.memory_bytes()) == {"embeddings", f"flat@{D}", f"ivf@{D}", "total"}


def test_ivf_with_few_probes_is_approximate_and_reports_fewer_flops(data):
    pytest.importorskip("faiss")
    db, queries = data
    ivf = MatryoshkaIndex(db, backend="faiss", index_type="ivf", nlist=16, nprobe=1)
    result = ivf.search(queries, 5, dim=16)
    stage = result.cost.stages[0]
    assert stage.index_type == "ivf"
    assert 16 < stage.scored_per_query < N  # centroids + one list, far from the whole database
    assert result.cost.exact_mflops_per_query == pytest.approx(N * 16 / 1e6)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_slots_an_approximate_index_leaves_empty_hold_the_worst_score(data, metric):
    """An IVF search of one probe finds fewer than k neighbours; its empty slots are id -1 with score -inf (+inf
    for l2), as SearchResult says and adaptive search gives, not FAISS's +-3.4e38 fill value."""
    pytest.importorskip("faiss")
    db, queries = data
    ivf = MatryoshkaIndex(db, backend="faiss", index_type="ivf", nlist=16, nprobe=1, metric=metric)
    result = ivf.search(queries, 100, dim=16)
    empty = result.ids < 0
    assert empty.any() and (~empty).any()
    assert (result.scores[empty] == (np.inf if metric == "l2" else -np.inf)).all()
    assert np.isfinite(result.scores[~empty]).all()


# -- add, copy, input types ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backends())
def test_add_in_parts_equals_one_build(data, backend):
    db, queries = data
    whole = MatryoshkaIndex(db, backend=backend)
    parts = MatryoshkaIndex(db[:200], backend=backend)
    parts.build([16, D])  # built structures must follow the additions
    parts.add(db[200:450]).add(torch.from_numpy(db[450:]))
    assert len(parts) == N
    for run in (lambda i: i.search(queries, 10), lambda i: i.adaptive_search(queries, 10, 16)):
        np.testing.assert_array_equal(run(parts).ids, run(whole).ids)


def test_add_updates_built_ivf_and_hnsw(data):
    pytest.importorskip("faiss")
    db, queries = data
    for index_type in ("ivf", "hnsw"):
        index = MatryoshkaIndex(db[:300], backend="faiss", index_type=index_type, nlist=4, nprobe=4, ef_search=N)
        index.build()
        index.add(db[300:])
        assert index._levels[D].ntotal == N
        ids = index.search(queries, 10).ids
        assert (ids >= 300).any()


def test_index_copies_its_input_and_accepts_tensors(data):
    db, queries = data
    source = db.copy()
    index = MatryoshkaIndex(source, backend="torch")
    before = index.search(queries, 5).ids
    source[:] = 0.0
    np.testing.assert_array_equal(index.search(queries, 5).ids, before)
    from_tensor = MatryoshkaIndex(torch.from_numpy(db).double(), backend="torch")
    np.testing.assert_array_equal(from_tensor.search(torch.from_numpy(queries), 5).ids, before)
    single = index.search(queries[0], 5)  # one query as a 1-D vector
    assert single.ids.shape == (1, 5) and single.ids[0].tolist() == before[0].tolist()
    assert not index.embeddings.flags.writeable
    shared = MatryoshkaIndex(source, backend="torch", copy=False)  # large databases: no second copy
    assert np.shares_memory(shared.embeddings, source)


def test_without_faiss_the_package_falls_back_to_torch():
    code = ("import sys; sys.modules['faiss'] = None\n"
            "import numpy as np\n"
            "from mrl_hf.retrieval import MatryoshkaIndex\n"
            "x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)\n"
            "index = MatryoshkaIndex(x)\n"
            "print(index.backend, index.adaptive_search(x[:3], 4, 4).ids[:, 0].tolist())\n"
            "try:\n"
            "    MatryoshkaIndex(x, index_type='hnsw')\n"
            "except ImportError as e:\n"
            "    print('ImportError', 'mrl-hf[faiss]' in str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["torch [0, 1, 2]", "ImportError True"]


# -- persistence --------------------------------------------------------------------------------------
def saved_kinds():
    kinds = [("torch", "flat")]
    try:
        import faiss  # noqa: F401
        kinds += [("faiss", "flat"), ("faiss", "hnsw"), ("faiss", "ivf")]
    except ImportError:
        pass
    return kinds


@pytest.mark.parametrize("backend,index_type", saved_kinds())
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_saved_index_reloads_identical(data, tmp_path, backend, index_type, metric):
    db, queries = data
    index = MatryoshkaIndex(db, metric=metric, backend=backend, index_type=index_type, nprobe=3, ef_search=20)
    runs = [lambda i: i.search(queries, 10), lambda i: i.search(queries, 7, dim=16),
            lambda i: i.adaptive_search(queries, 10, 8, shortlist_k=40), lambda i: i.funnel_search(queries, 10)]
    before = [run(index) for run in runs]
    index.save(tmp_path / "idx")
    loaded = MatryoshkaIndex.load(tmp_path / "idx")
    assert (loaded.metric, loaded.backend, loaded.index_type, loaded.nprobe, loaded.ef_search) == \
           (metric, backend, index_type, 3, 20)
    np.testing.assert_array_equal(loaded.embeddings, db)
    for run, (scores, ids) in zip(runs, before):
        s, i = run(loaded)
        np.testing.assert_array_equal(i, ids)
        np.testing.assert_array_equal(s, scores)
    mapped = MatryoshkaIndex.load(tmp_path / "idx", mmap=True)
    np.testing.assert_array_equal(runs[2](mapped).ids, before[2].ids)
    if index_type == "flat":  # a flat index saved with FAISS can be searched without it
        np.testing.assert_array_equal(runs[3](MatryoshkaIndex.load(tmp_path / "idx", backend="torch")).ids,
                                      before[3].ids)


def test_failed_save_leaves_the_old_index_intact(data, tmp_path, monkeypatch):
    db, queries = data
    path = tmp_path / "idx"
    MatryoshkaIndex(db[:100], backend="torch").save(path)
    bigger = MatryoshkaIndex(db, backend="torch")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    monkeypatch.undo()
    assert len(MatryoshkaIndex.load(path)) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp directories left behind
    bigger.save(path)  # a working save replaces it
    assert len(MatryoshkaIndex.load(path)) == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_failed_faiss_write_leaves_the_old_index_intact(data, tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from mrl_hf.retrieval._faiss_backend import FaissLevel

    db, queries = data
    path = tmp_path / "idx"
    old = MatryoshkaIndex(db[:100], backend="faiss", index_type="hnsw").build()
    old.save(path)
    new = MatryoshkaIndex(db, backend="faiss", index_type="hnsw").build()
    monkeypatch.setattr(FaissLevel, "save", lambda self, p: (_ for _ in ()).throw(RuntimeError("write failed")))
    with pytest.raises(RuntimeError, match="write failed"):
        new.save(path)
    monkeypatch.undo()
    reloaded = MatryoshkaIndex.load(path)
    assert len(reloaded) == 100 and reloaded.built_dims == [D]
    np.testing.assert_array_equal(reloaded.search(queries, 5).ids, old.search(queries, 5).ids)


def test_save_into_a_folder_with_other_files_writes_only_its_own(data, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    (folder / "mrl_index.json").write_text("{not an index")  # a file of the name the index writes: replaced
    with pytest.raises(ValueError, match="mrl_index.json.*not valid JSON"):
        MatryoshkaIndex.load(folder)
    MatryoshkaIndex(data[0], backend="torch").save(folder)
    MatryoshkaIndex(data[0][:10], backend="torch").save(folder)  # a second save replaces only the index's files
    assert (folder / "thesis.tex").read_text() == "precious" and len(MatryoshkaIndex.load(folder)) == 10
    with pytest.raises(FileNotFoundError, match="mrl_index.json"):
        MatryoshkaIndex.load(tmp_path)


# -- cost accounting ----------------------------------------------------------------------------------
def test_cost_counts_dot_products_as_the_paper(data):
    db, queries = data
    index = MatryoshkaIndex(db, backend="torch")
    assert index.search(queries, 10).cost.mflops_per_query == pytest.approx(N * D / 1e6)
    cost = index.adaptive_search(queries, 10, 8, shortlist_k=50).cost
    assert cost.mflops_per_query == pytest.approx((N * 8 + 50 * D) / 1e6)
    assert [s.kind for s in cost.stages] == ["search", "rerank"] and cost.n_queries == NQ
    assert cost.seconds > 0 and cost.ms_per_query == pytest.approx(1e3 * cost.seconds / NQ)
    # The paper's funnel on ImageNet-1K (Table 13, D_s=16): 20.54 MFLOPs per query.
    funnel = SearchCost((StageCost("search", 16, 1281167), StageCost("rerank", 32, 200),
                         StageCost("rerank", 64, 100), StageCost("rerank", 128, 50),
                         StageCost("rerank", 256, 25), StageCost("rerank", 2048, 10)), 1281167, 1, 1.0)
    assert round(funnel.mflops_per_query, 2) == 20.54


def test_a_search_result_pickles_and_copies_with_its_cost(data):
    """A result sent from a worker process (or copied) kept only (scores, ids): unpickling raised a TypeError."""
    import copy
    import pickle

    db, queries = data
    result = MatryoshkaIndex(db, backend="torch").adaptive_search(queries, 5, 8, shortlist_k=20)
    for other in (pickle.loads(pickle.dumps(result)), copy.copy(result), copy.deepcopy(result)):
        assert isinstance(other, SearchResult) and str(other.cost) == str(result.cost)
        np.testing.assert_array_equal(other.ids, result.ids)
        np.testing.assert_array_equal(other.scores, result.scores)


def test_memory_bytes_counts_embeddings_and_structures(data):
    db, _ = data
    index = MatryoshkaIndex(db, backend="torch").build([16, D])
    mem = index.memory_bytes()
    assert mem == {"embeddings": N * D * 4, "flat@16": N * 16 * 4, f"flat@{D}": N * D * 4,
                   "total": N * D * 4 * 2 + N * 16 * 4}


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors(data):
    db, queries = data
    index = MatryoshkaIndex(db, backend="torch")
    with pytest.raises(ValueError, match="queries have 80 dims but the database holds 64"):
        index.search(np.zeros((2, 80), np.float32), 5)
    with pytest.raises(ValueError, match="queries have 16 dims but this search scores at dim 64"):
        index.adaptive_search(queries[:, :16], 5, 16)
    with pytest.raises(ValueError, match="shortlist_k=5 is smaller than top_k=10"):
        index.adaptive_search(queries, 10, 16, shortlist_k=5)
    with pytest.raises(ValueError, match=r"steps\[1\] keeps 5 candidates, fewer than top_k=10"):
        index.funnel_search(queries, 10, steps=[(16, 100), (64, 5)])
    with pytest.raises(ValueError, match="must not decrease"):
        index.funnel_search(queries, 10, steps=[(32, 100), (16, 10)])
    with pytest.raises(ValueError, match="must not grow"):
        index.funnel_search(queries, 10, steps=[(16, 50), (32, 100)])
    with pytest.raises(ValueError, match="rerank_dim=8 is smaller than shortlist_dim=16"):
        index.adaptive_search(queries, 10, 16, rerank_dim=8)
    with pytest.raises(ValueError, match="dim=65 is out of range"):
        index.search(queries, 10, dim=65)
    with pytest.raises(ValueError, match=f"top_k=601 is larger than the {N} vectors"):
        index.search(queries, N + 1)
    with pytest.raises(TypeError, match="top_k must be an int"):
        index.search(queries, 2.5)


def test_empty_database_raises_until_filled(data):
    db, queries = data
    index = MatryoshkaIndex(np.empty((0, D), np.float32), backend="torch")
    with pytest.raises(ValueError, match=r"index is empty \(0 vectors\); add embeddings"):
        index.search(queries, 5)
    index.add(db)
    assert index.search(queries, 5).ids.shape == (NQ, 5)


def test_nan_vectors_are_rejected_with_their_rows(data):
    db, queries = data
    bad = db.copy()
    bad[3, 5] = np.nan
    bad[17, 0] = np.inf
    with pytest.raises(ValueError, match=r"embeddings has NaN or inf values in row\(s\) 3, 17"):
        MatryoshkaIndex(bad, backend="torch")
    index = MatryoshkaIndex(db, backend="torch")
    with pytest.raises(ValueError, match=r"embeddings has NaN or inf values in row\(s\) 3"):
        index.add(bad[:10])
    assert len(index) == N  # the failed add changed nothing
    bad_q = queries.copy()
    bad_q[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"queries has NaN or inf values in row\(s\) 1"):
        index.search(bad_q, 5)


def test_bad_types_and_options(data):
    db, _ = data
    with pytest.raises(TypeError, match="must hold floats"):
        MatryoshkaIndex(db.astype(np.int64))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        MatryoshkaIndex(db.tolist())
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        MatryoshkaIndex(db[0])
    with pytest.raises(ValueError, match="metric='dot' is not supported"):
        MatryoshkaIndex(db, metric="dot")
    with pytest.raises(ValueError, match="backend='annoy' is not supported"):
        MatryoshkaIndex(db, backend="annoy")
    with pytest.raises(ValueError, match="index_type='lsh' is not supported"):
        MatryoshkaIndex(db, index_type="lsh")
    with pytest.raises(ValueError, match="needs backend='faiss'"):
        MatryoshkaIndex(db, backend="torch", index_type="hnsw")
    with pytest.raises(ValueError, match="embeddings have 32 dims but the index holds 64"):
        MatryoshkaIndex(db, backend="torch").add(db[:, :32])
