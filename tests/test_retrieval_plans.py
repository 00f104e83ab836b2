"""Search plans (prefix x precision codes, float32 re-rank), the tuner, persistence and bad input."""
import faiss  # noqa: F401  (dev extra)
import numpy as np
import pytest

from mrl_hf.evaluation import top_k_overlap  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex, NoPlanMeetsTarget, SearchPlan  # noqa: E402

N, D, NQ = 5000, 128, 100
PRECISIONS = ["float32", "float16", "int8", "int4", "pq4", "binary", "binary-asymmetric"]


def matryoshka_like(n, n_queries, dim=D, seed=0, n_clusters=100):
    """Cluster centre + noise, both with per-dim scale 1/sqrt(j): low dims carry most of the signal."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) * scale

    def draw(count):
        x = centres[rng.integers(0, n_clusters, count)]
        return x + 0.5 * rng.standard_normal((count, dim), dtype=np.float32) * scale

    return draw(n), draw(n_queries)


@pytest.fixture(scope="module")
def data():
    return matryoshka_like(N, NQ)


@pytest.fixture(scope="module")
def index(data):
    return MatryoshkaIndex(data[0], metric="cosine")


@pytest.fixture(scope="module")
def exact(index, data):
    return index.search(data[1], 10)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("structure", ["flat", "ivf"])
def test_plan_with_every_vector_as_candidate_is_exact_search(index, data, exact, precision, structure):
    plan = SearchPlan(32, precision, structure, candidates=N, nprobe=10_000)  # IVF: probe every list
    result = index.search_plan(data[1], 10, plan)
    np.testing.assert_array_equal(result.ids, exact.ids)
    np.testing.assert_allclose(result.scores, exact.scores, rtol=1e-5, atol=1e-6)
    assert [s.kind for s in result.cost.stages] == ["search", "rerank"]
    assert result.cost.stages[0].index_type == f"{structure}-{precision}"


def test_binary_prefix_with_rerank_recovers_exact_top10(index, data, exact):
    # 64 sign bits (8 bytes/vector) shortlist 200, re-ranked at 128 dims in float32
    recall = top_k_overlap(index.search_plan(data[1], 10, SearchPlan(64, "binary", "flat", 200)).ids, exact.ids, 10)
    assert recall >= 0.97
    # with 20 candidates the sign bits alone cannot find the top 10: the re-rank is what recovers it
    assert top_k_overlap(index.search_plan(data[1], 10, SearchPlan(64, "binary", "flat", 20)).ids, exact.ids, 10) < 0.6


@pytest.mark.parametrize("precision,floor", [("int8", 0.95), ("float16", 0.97)])
def test_scalar_codes_rank_nearly_like_float32(index, data, exact, precision, floor):
    recall = top_k_overlap(index.search_plan(data[1], 10, SearchPlan(D, precision, "flat", 10)).ids, exact.ids, 10)
    assert recall >= floor


def test_int4_codes_rank_between_binary_and_int8(index, data, exact):
    def recall(precision, candidates):
        plan = SearchPlan(D, precision, "flat", candidates)
        return top_k_overlap(index.search_plan(data[1], 10, plan).ids, exact.ids, 10)

    assert recall("binary", 10) + 0.2 < recall("int4", 10) < recall("int8", 10) - 0.1  # measured 0.30 / 0.71 / 0.98
    assert recall("int4", 20) >= 0.9 and recall("int4", 50) >= 0.99  # a short shortlist re-ranked recovers the rest


def test_pq4_codes_are_fast_scan_product_quantisation_of_the_prefix(index, data, exact):
    def recall(precision, candidates, structure="flat"):
        plan = SearchPlan(D, precision, structure, candidates, nprobe=16)
        return top_k_overlap(index.search_plan(data[1], 10, plan).ids, exact.ids, 10)

    # 2 bits per feature: between sign bits (1) and int4 (4); measured 0.30 / 0.48 / 0.71 at 10 candidates
    assert recall("binary", 10) + 0.1 < recall("pq4", 10) < recall("int4", 10) - 0.1
    assert recall("pq4", 50) >= 0.99 and recall("pq4", 50, "ivf") >= 0.99
    flat, ivf = (faiss.downcast_index(index._code_level(SearchPlan(64, "pq4", s, 10)).index) for s in ("flat", "ivf"))
    assert isinstance(flat, faiss.IndexPQFastScan) and isinstance(ivf, faiss.IndexIVFPQFastScan)
    assert (flat.pq.M, flat.pq.nbits, ivf.pq.M) == (32, 4, 32)  # one 4-bit code per pair of the 64 features
    assert index.plan_memory(SearchPlan(64, "pq4", "flat", 100))["codes"] == pytest.approx(16, abs=1.5)  # + codebooks


def test_binary_asymmetric_plans_score_the_sign_bits_with_the_float_query(index, data, exact):
    from mrl_hf.quantization import asymmetric_binary_scores, quantize_embeddings
    from mrl_hf.retrieval._inputs import prefix
    from mrl_hf.retrieval.codes import sign_bits

    db, queries = data
    level = index._code_level(SearchPlan(64, "binary-asymmetric", "flat", 10))
    stored = level.index.reconstruct_n(0, N) * np.sqrt(64)
    np.testing.assert_array_equal(stored, np.where(prefix(db, 64, "cosine") > 0, 1.0, -1.0))  # exactly the sign bits
    shortlist, _ = level.search(queries, 20, 0, 0)
    scores = asymmetric_binary_scores(prefix(queries, 64, "cosine"), quantize_embeddings(prefix(db, 64, "cosine"),
                                                                                         "ubinary")).numpy()
    reference = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    assert top_k_overlap(shortlist, reference, 20) >= 0.97  # 8-bit lookup tables: measured 0.991

    def recall(precision, candidates, structure="flat"):
        plan = SearchPlan(64, precision, structure, candidates, nprobe=16)
        return top_k_overlap(index.search_plan(queries, 10, plan).ids, exact.ids, 10)

    # the same 8 bytes per vector; measured 0.41 vs 0.32 at 10 candidates, 0.995 vs 0.973 at 50
    assert recall("binary-asymmetric", 10) > recall("binary", 10) + 0.05
    assert recall("binary-asymmetric", 50) >= 0.99 > recall("binary", 50)
    assert recall("binary-asymmetric", 50, "ivf") >= 0.99
    codes = index.plan_memory(SearchPlan(64, "binary-asymmetric", "flat", 10))["codes"]
    assert codes == pytest.approx(index.plan_memory(SearchPlan(64, "binary", "flat", 10))["codes"], abs=1.5)
    # an exact 0 is a - bit, as sign_bits reads it (FAISS's encoder took a zero chunk for the pattern - - - +)
    zeros = db[:300].copy()
    zeros[5, :4], zeros[7, 8:16] = 0.0, 0.0
    level = MatryoshkaIndex(zeros, backend="faiss")._code_level(SearchPlan(16, "binary-asymmetric", "flat", 10))
    stored = level.index.reconstruct_n(0, 300) > 0
    np.testing.assert_array_equal(stored, np.unpackbits(sign_bits(zeros[:, :16]), axis=1).astype(bool))


def test_hnsw_codes_with_rerank(index, data, exact):
    for precision in ("binary", "int4", "int8"):
        result = index.search_plan(data[1], 10, SearchPlan(64, precision, "hnsw", 200, ef_search=200))
        assert top_k_overlap(result.ids, exact.ids, 10) >= 0.97


def test_plan_memory_counts_codes_and_norms(index):
    mem = index.plan_memory(SearchPlan(64, "binary", "flat", 100))
    assert mem["codes"] == pytest.approx(64 / 8, abs=0.1)  # 8 bytes of sign bits (+ a FAISS header)
    assert mem["rerank_norms"] == 4.0 and mem["ram"] == pytest.approx(mem["codes"] + 4.0)
    assert mem["full_vectors_on_disk"] == 4 * D
    assert index.plan_memory(SearchPlan(64, "int8", "flat", 100))["codes"] == pytest.approx(64, abs=1)
    assert index.plan_memory(SearchPlan(64, "int4", "flat", 100))["codes"] == pytest.approx(32, abs=1)
    hnsw = index.plan_memory(SearchPlan(64, "binary", "hnsw", 100))["codes"]
    assert 8 + 4 * 32 < hnsw < 8 + 4 * 64 + 20  # 32..64 links per vector at level 0
    assert "flat-binary@64" in index.memory_bytes()


def test_plan_graphs_are_built_with_the_index_hnsw_settings(data):
    db, queries = data
    index = MatryoshkaIndex(db[:2000], metric="cosine", hnsw_m=8, ef_construction=100)
    for precision in ("int8", "binary"):
        level = index._code_level(SearchPlan(64, precision, "hnsw", 50))
        graph = (level.index if precision == "binary" else faiss.downcast_index(level.index)).hnsw
        assert graph.efConstruction == 100
        assert graph.nb_neighbors(0) == 16  # FAISS keeps 2 * M links per vector at level 0
    small = index.plan_memory(SearchPlan(64, "int8", "hnsw", 50))["codes"]
    assert small < MatryoshkaIndex(db[:2000], metric="cosine").plan_memory(SearchPlan(64, "int8", "hnsw", 50))["codes"]


def test_a_plan_sets_its_own_graph_size(data, tmp_path):
    db, queries = data
    index = MatryoshkaIndex(db[:2000], metric="cosine")  # hnsw_m=32 by default
    small, default = SearchPlan(64, "int8", "hnsw", 50, hnsw_m=8), SearchPlan(64, "int8", "hnsw", 50)
    assert index.code_key(small) == (64, "int8", "hnsw", None, 8, False)
    assert index.code_key(default) == index.code_key(SearchPlan(64, "int8", "hnsw", 50, hnsw_m=32))
    assert index.plan_memory(small)["codes"] < index.plan_memory(default)["codes"] - 150  # 16 vs 64 links at level 0
    assert small.describe() == "int8@64 hnsw M=8 -> 50 -> float32@full"
    before = index.search_plan(queries, 10, small)
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "codes_64_int8_hnsw_m8.faiss").is_file()
    assert (tmp_path / "ix" / "codes_64_int8_hnsw.faiss").is_file()  # the index's own M keeps the old name
    loaded = MatryoshkaIndex.load(tmp_path / "ix")
    assert set(loaded._codes) == set(index._codes)
    np.testing.assert_array_equal(loaded.search_plan(queries, 10, small).ids, before.ids)
    result = index.tune(queries, target_recall=0.9, dims=[64], precisions=["int8"], structures=["hnsw"],
                        candidates=[50], hnsw_m=[8, None])
    assert {r.plan.hnsw_m for r in result.reports} == {8, None}
    assert "hnsw M=8" in str(result)
    with pytest.raises(ValueError, match=r"hnsw_m sets the links of an HNSW graph, so it needs structure='hnsw'"):
        SearchPlan(64, "int8", "flat", hnsw_m=8)
    with pytest.raises(ValueError, match=r"SearchPlan.hnsw_m"):
        SearchPlan(64, "int8", "hnsw", hnsw_m=1)


def test_threaded_rerank_equals_the_serial_one(data):
    from mrl_hf.retrieval._rerank import prefix_norms, rerank

    db, _ = data
    queries = np.repeat(data[1], 20, axis=0)  # 2,000 queries: many blocks of rows to share between threads
    candidates = np.random.default_rng(0).integers(-1, len(db), (len(queries), 300))
    for metric in ("cosine", "l2"):
        norms = prefix_norms(db, D) if metric == "cosine" else None
        serial = rerank(db, queries, candidates, D, metric, 10, norms)
        threaded = rerank(db, queries, candidates, D, metric, 10, norms, threads=2)
        for a, b in zip(serial, threaded):
            np.testing.assert_array_equal(a, b)


def test_add_in_parts_updates_codes(data):
    db, queries = data
    plan = SearchPlan(64, "binary", "hnsw", 100)
    whole = MatryoshkaIndex(db).search_plan(queries, 10, SearchPlan(64, "binary", "flat", 100))
    parts = MatryoshkaIndex(db[:3000])
    parts.search_plan(queries, 10, SearchPlan(64, "binary", "flat", 100))  # codes built on 3000 vectors
    parts.search_plan(queries, 10, plan)
    parts.add(db[3000:])
    np.testing.assert_array_equal(parts.search_plan(queries, 10, SearchPlan(64, "binary", "flat", 100)).ids,
                                  whole.ids)
    assert parts._codes[parts.code_key(plan)].ntotal == N


def test_tuner_keeps_the_cheapest_plan_that_meets_the_target(index, data, exact):
    result = index.tune(data[1], target_recall=0.95, objective="ram", dims=[32, 64], precisions=["binary", "int8"],
                        structures=["flat"], candidates=[20, 100, 400])
    meeting = [r for r in result.reports if r.meets_target]
    assert result.chosen.meets_target and result.chosen.recall >= 0.95
    assert result.chosen.ram_bytes_per_vector == min(r.ram_bytes_per_vector for r in meeting)
    assert index.plan == result.plan
    # the reported recall is what the plan gives
    assert top_k_overlap(index.search_plan(data[1], 10).ids, exact.ids, 10) == pytest.approx(result.chosen.recall)
    table = str(result)
    assert "| dims | precision | structure | candidates | RAM B/vector | ms/query | recall@10 |" in table
    assert "**chosen**" in table and len(result.pareto()) >= 1
    fastest = index.tune(data[1], target_recall=0.95, objective="latency", dims=[32, 64],
                         precisions=["binary", "int8"], structures=["flat"], candidates=[20, 100, 400])
    assert fastest.chosen.ms_per_query == min(r.ms_per_query for r in fastest.reports if r.meets_target)


def test_tuner_counts_ties_at_the_kth_score_as_found():
    """Every vector three times: exact search and a plan that scans everything may keep different copies at the
    10th place. That is no lost recall (ann-benchmarks counts ties as found): the exhaustive plan reaches 1.0."""
    rng = np.random.default_rng(0)
    db = np.repeat(rng.standard_normal((300, 64)).astype(np.float32), 3, axis=0)
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    index = MatryoshkaIndex(db, metric="cosine")
    result = index.tune(queries, target_recall=0.999, dims=[64], precisions=["float32"], structures=["flat"],
                        candidates=[900])
    assert result.chosen.recall == 1.0


def test_tuner_keeps_to_a_ram_budget(data):
    db, queries = data
    index = MatryoshkaIndex(db[:2000], metric="cosine")
    result = index.tune(queries, target_recall=0.9, objective="latency", dims=[32, 64, 128],
                        precisions=["binary", "int8"], structures=["flat", "hnsw"], candidates=[20, 100, 400],
                        max_ram_bytes_per_vector=40)
    assert result.reports and all(r.ram_bytes_per_vector <= 40 for r in result.reports)
    tried = {index.code_key(r.plan) for r in result.reports}
    assert {(d, "binary", "flat", None, None, False) for d in (32, 64, 128)} <= tried
    assert (64, "int8", "flat", None, None, False) in result.over_budget  # 64 B of codes: refused before building
    assert (64, "int8", "flat", None, None, False) not in index._codes
    # 4 B of codes, but the graph's links exceed 40 B:
    assert (32, "binary", "hnsw", None, 32, False) in result.over_budget
    assert "over the RAM budget, not searched" in str(result)
    assert result.chosen.ms_per_query == min(r.ms_per_query for r in result.reports if r.meets_target)
    with pytest.raises(ValueError, match=r"max_ram_bytes_per_vector=0 must be a number of bytes > 0"):
        index.tune(queries, max_ram_bytes_per_vector=0)
    with pytest.raises(ValueError, match=r"every structure is over max_ram_bytes_per_vector=2 \(2 were\)"):
        index.tune(queries, dims=[64], precisions=["int8"], structures=["flat", "ivf"], max_ram_bytes_per_vector=2)


def test_tuner_names_the_closest_plan_when_none_meets_the_target(index, data):
    with pytest.raises(NoPlanMeetsTarget, match=r"Closest: binary@8 flat -> 20 -> float32@full with recall") as err:
        index.tune(data[1], target_recall=1.0, dims=[8], precisions=["binary"], structures=["flat"],
                   candidates=[10, 20])
    assert err.value.closest.plan.candidates == 20 and len(err.value.reports) == 2
    assert isinstance(err.value, ValueError)


def test_tuner_grows_an_hnsw_shortlist_past_ef_search():
    """Candidates 20 and 50 both search the graph with a beam of ef_search=64, so their recalls are equal; the plateau
    rule stopped there and reported no plan, though 100+ candidates widen the beam and reach the target."""
    rng = np.random.default_rng(0)
    index = MatryoshkaIndex(rng.normal(size=(5000, 128)).astype(np.float32))  # ef_search=64
    queries = rng.normal(size=(200, 128)).astype(np.float32)
    result = index.tune(queries, np.float32(0.99), precisions="float32", structures="hnsw", dims=128)
    tried = [r.plan.candidates for r in result.reports]
    assert tried[:2] == [20, 50] and result.reports[0].recall == result.reports[1].recall  # the same beam
    assert result.plan.candidates > 64 and result.reports[-1].recall >= 0.99
    with pytest.raises(NoPlanMeetsTarget) as err:  # one probed list bounds recall: the counts stop early
        index.tune(queries, 1.0, precisions=("float32",), structures=("ivf",), dims=[128], nprobe=1,
                   candidates=(20, 50, 100, 200, 1000))
    largest = max(r.plan.candidates for r in err.value.reports)
    assert largest < 1000 and f"largest tried: {largest})" in str(err.value)  # was the grid's 1000


def test_plan_and_codes_survive_save_and_mmap_load(index, data, tmp_path):
    plan = SearchPlan(64, "binary", "hnsw", 200, ef_search=128)
    index.plan = plan
    before = index.search_plan(data[1], 10)
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "codes_64_binary_hnsw.faiss").is_file()
    loaded = MatryoshkaIndex.load(tmp_path / "ix", mmap=True)
    assert isinstance(loaded._db, np.memmap)  # full vectors stay on disk, read only for the re-rank
    assert loaded.plan == plan and loaded.code_key(plan) in loaded._codes
    after = loaded.search_plan(data[1], 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)


def test_tuner_tries_fast_scan_codes_where_they_exist_and_they_reload(data, tmp_path):
    db, queries = data
    index = MatryoshkaIndex(db[:2000], metric="cosine")
    result = index.tune(queries, target_recall=0.95, dims=[31, 64], precisions=["pq4", "binary-asymmetric"],
                        structures=["flat", "hnsw", "ivf"], candidates=[20, 100], nprobe=[64])
    tried = {index.code_key(r.plan)[:3] for r in result.reports}
    assert tried == {(64, p, s) for p in ("pq4", "binary-asymmetric") for s in ("flat", "ivf")}  # no graph, no odd dim
    plans = [SearchPlan(64, "pq4", "ivf", 100, nprobe=64), SearchPlan(64, "binary-asymmetric", "flat", 20)]
    before = [index.search_plan(queries, 10, plan) for plan in plans]
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "codes_64_pq4_ivf.faiss").is_file()
    assert (tmp_path / "ix" / "codes_64_binary-asymmetric_flat.faiss").is_file()
    loaded = MatryoshkaIndex.load(tmp_path / "ix", mmap=True)
    for plan, earlier in zip(plans, before):  # the sign codebooks are saved with the codes
        np.testing.assert_array_equal(loaded.search_plan(queries, 10, plan).ids, earlier.ids)


def test_bad_plans_raise_clear_errors(index, data):
    q = data[1]
    with pytest.raises(ValueError, match=r"dim=256, but the index stores 128-dim vectors; choose dim <= 128"):
        index.search_plan(q, 10, SearchPlan(256, "int8"))
    with pytest.raises(ValueError, match=r"precision='int2' is not supported; choose one of"):
        SearchPlan(64, "int2")
    with pytest.raises(ValueError, match=r"structure='pq' is not supported"):
        SearchPlan(64, "int8", "pq")
    with pytest.raises(ValueError, match=r"multiple of 8; use dim=96"):
        SearchPlan(100, "binary")
    with pytest.raises(ValueError, match=r"pq4 codes each pair of features as one 4-bit code, so dim must be even; "
                                         r"use dim=64"):
        SearchPlan(65, "pq4")
    with pytest.raises(ValueError, match=r"fast-scan, which has no graph; use structure='ivf'"):
        SearchPlan(64, "pq4", "hnsw")
    with pytest.raises(ValueError, match=r"has no graph; use structure='ivf' \(or 'flat'\), or precision='binary'"):
        SearchPlan(64, "binary-asymmetric", "hnsw")
    with pytest.raises(ValueError, match=r"precision='binary-asymmetric'\): binary codes pack 8 sign bits per byte, "
                                         r"so dim must be a multiple of 8; use dim=96"):
        SearchPlan(100, "binary-asymmetric")
    with pytest.raises(ValueError, match=r"binary \(sign-bit\) codes .* metric='l2'"):
        MatryoshkaIndex(data[0][:100], metric="l2").search_plan(q, 10, SearchPlan(64, "binary-asymmetric"))
    with pytest.raises(ValueError, match=r"cluster_dim=16\): AdANNS-IVF lists hold scalar or Hamming codes"):
        SearchPlan(64, "pq4", "ivf", cluster_dim=16)
    with pytest.raises(ValueError, match=r"keeps 5 candidates, fewer than top_k=10"):
        index.search_plan(q, 10, SearchPlan(64, "binary", candidates=5))
    with pytest.raises(ValueError, match=r"queries have 64 dims but this search scores at dim 128"):
        index.search_plan(q[:, :64], 10, SearchPlan(64, "binary"))
    with pytest.raises(ValueError, match=r"No plan: pass plan=SearchPlan"):
        MatryoshkaIndex(data[0][:100]).search_plan(q, 10)
    with pytest.raises(TypeError, match=r"plan must be a SearchPlan"):
        index.search_plan(q, 10, (64, "binary"))
    with pytest.raises(ValueError, match=r"binary \(sign-bit\) codes .* metric='l2'"):
        MatryoshkaIndex(data[0][:100], metric="l2").search_plan(q, 10, SearchPlan(64, "binary"))
    with pytest.raises(ValueError, match=r"objective='memory' is not supported"):
        index.tune(q, objective="memory")
    with pytest.raises(ValueError, match=r"target_recall=1.5 must be a number in \(0, 1\]"):
        index.tune(q, target_recall=1.5)
    with pytest.raises(ValueError, match=r"dims entry 512 exceeds the index's stored size 128"):
        index.tune(q, dims=[512])


def test_a_memory_mapped_load_reads_no_vector_before_the_rerank(index, data, tmp_path):
    plan = SearchPlan(64, "binary", "flat", 50)
    before = index.search_plan(data[1], 10, plan)  # builds the codes and the full-dim re-rank norms
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / f"norms_{D}.npy").is_file()
    loaded = MatryoshkaIndex.load(tmp_path / "ix", mmap=True)
    np.testing.assert_array_equal(loaded._norms[D], index._norms[D])  # loaded, not recomputed from every row
    after = loaded.search_plan(data[1], 10, plan)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
    np.save(tmp_path / "ix" / f"norms_{D}.npy", np.ones(3, np.float32))
    with pytest.raises(ValueError, match=rf"norms_{D}.npy' holds 3 norms for {N} vectors; the saved index is damaged"):
        MatryoshkaIndex.load(tmp_path / "ix", mmap=True)


def test_indexes_saved_before_per_plan_graphs_still_load(data, tmp_path):
    import json

    db, queries = data
    index = MatryoshkaIndex(db[:2000], metric="cosine")
    plans = [SearchPlan(64, "binary", "hnsw", 50), SearchPlan(64, "int8", "ivf", 50, cluster_dim=16)]
    before = [index.search_plan(queries, 10, plan).ids for plan in plans]
    index.save(tmp_path / "ix")
    config_file = tmp_path / "ix" / "mrl_index.json"
    config = json.loads(config_file.read_text())
    config["saved_codes"] = [[64, "binary", "hnsw"], [64, "int8", "ivf", 16]]  # the two older layouts
    del config["saved_norms"]
    config_file.write_text(json.dumps(config))
    loaded = MatryoshkaIndex.load(tmp_path / "ix")
    assert set(loaded._codes) == {(64, "binary", "hnsw", None, 32, False), (64, "int8", "ivf", 16, None, False)}
    for plan, ids in zip(plans, before):
        np.testing.assert_array_equal(loaded.search_plan(queries, 10, plan).ids, ids)


def test_plans_take_numpy_ints_and_save_them(tmp_path):
    """Sizes and knobs that come out of numpy arrays (np.int64) reached FAISS's SWIG setters and json unconverted."""
    rng = np.random.default_rng(0)
    db, q = rng.standard_normal((300, 32)).astype(np.float32), rng.standard_normal((4, 32)).astype(np.float32)
    index = MatryoshkaIndex(db)
    plan = SearchPlan(np.int64(16), "int8", "hnsw", np.int64(50), ef_search=np.int64(80), hnsw_m=np.int64(16))
    assert type(plan.dim) is int and type(plan.ef_search) is int and type(plan.hnsw_m) is int
    index.plan = plan
    assert index.search_plan(q, 5).ids.shape == (4, 5)
    index.save(tmp_path / "ix")  # the plan goes into json
    assert MatryoshkaIndex.load(tmp_path / "ix").plan == plan
    ivf = SearchPlan(16, "int8", "ivf", 50, nprobe=np.int64(4))
    assert index.search_plan(q, 5, ivf).ids.shape == (4, 5)
    graph = MatryoshkaIndex(db, index_type="hnsw")
    graph.ef_search = np.int64(8)  # set on the index after it was built
    assert graph.search(q, 5, dim=32).ids.shape == (4, 5)
    index.plan, index.ef_search, index.nprobe = None, np.int64(32), np.int64(4)  # read by plans without their own
    assert type(index.ef_search) is int and type(index.nprobe) is int
    assert index.search_plan(q, 5, SearchPlan(16, "int8", "hnsw", 20)).ids.shape == (4, 5)
    assert index.search_plan(q, 5, SearchPlan(16, "int8", "ivf", 20)).ids.shape == (4, 5)
    index.save(tmp_path / "knobs")
    assert MatryoshkaIndex.load(tmp_path / "knobs").nprobe == 4
    with pytest.raises(ValueError, match="nprobe=0 is too small"):
        index.nprobe = 0


def test_int8_codes_are_recalibrated_after_add():
    """int8 levels come from the rows they were built on: rows added later outside those ranges were clipped (recall
    at the full dim fell to 0.47). add() drops them, and the next search builds them on every row."""
    rng = np.random.default_rng(0)
    small, big = 0.1 * rng.standard_normal((200, 32)), rng.standard_normal((2000, 32))
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    plan = SearchPlan(32, "int8", "flat", 20)
    grown = MatryoshkaIndex(small.astype(np.float32), metric="ip")
    grown.search_plan(queries, 10, plan)  # codes built on the small rows
    grown.add(big.astype(np.float32))
    whole = MatryoshkaIndex(np.concatenate([small, big]).astype(np.float32), metric="ip")
    exact = whole.search(queries, 10, exact=True)
    assert top_k_overlap(grown.search_plan(queries, 10, plan).ids, exact.ids, 10) == \
        top_k_overlap(whole.search_plan(queries, 10, plan).ids, exact.ids, 10) > 0.95


def test_fast_scan_codes_on_a_tiny_index_are_refused_and_the_tuner_skips_them():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((12, 64)).astype(np.float32)
    index = MatryoshkaIndex(db)
    with pytest.raises(ValueError, match=r"holds 12 vectors \(fewer than 16\); use precision='binary' or 'int8'"):
        index.search_plan(db[:2], 1, SearchPlan(16, "binary-asymmetric", "flat", 5))
    result = index.tune(db[:4], target_recall=0.9, top_k=3, structures=("flat",), candidates=[12])
    assert result.chosen.plan.precision not in ("pq4", "binary-asymmetric")


def test_short_queries_to_a_plan_are_told_to_pass_full_size_ones(index, data):
    with pytest.raises(ValueError, match=rf"pass full-size \({index.dim}-dim\) queries: plans re-rank at the full"):
        index.search_plan(data[1][:, :32], 10, SearchPlan(32, "int8", "flat", 50))


def test_the_torch_backend_searches_read_only_queries_quietly():
    import warnings

    rng = np.random.default_rng(0)
    index = MatryoshkaIndex(rng.normal(size=(50, 16)).astype(np.float32), metric="ip", backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warned "The given NumPy array is not writable"
        assert index.search(index.embeddings[:5], 3).ids.shape == (5, 3)
