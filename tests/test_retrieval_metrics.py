"""Retrieval metrics: hand-worked values, the paper's mAP convention, and per-dim evaluation on real digits."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mrl_hf.evaluation import (
    average_precision_at_k,
    evaluate_retrieval_per_dim,
    mean_average_precision_at_k,
    precision_at_k,
    nn_recall_at_k,
    retrieval_metrics,
    tie_aware_overlap,
    top1_accuracy,
    top_k_overlap,
)
from mrl_hf.retrieval import MatryoshkaIndex

# database: 6 items of class 0, 2 of class 1, 2 of class 2
DB_LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])


def test_average_precision_by_hand():
    ids = np.array([
        [0, 6, 1, 7],   # class 0 query: relevant at ranks 1 and 3 -> (1/1 + 2/3) / min(4, 6)
        [6, 7, 0, 1],   # class 1 query: both of its 2 items first -> (1 + 1) / min(4, 2) = 1
        [0, 1, 8, 9],   # class 2 query: relevant at ranks 3, 4 -> (1/3 + 2/4) / 2
    ])
    labels = np.array([0, 1, 2])
    ap = average_precision_at_k(ids, labels, DB_LABELS, 4)
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 4, 1.0, (1 / 3 + 2 / 4) / 2])
    assert mean_average_precision_at_k(ids, labels, DB_LABELS, 4) == pytest.approx(ap.mean())
    assert precision_at_k(ids, labels, DB_LABELS, 4) == pytest.approx((2 + 2 + 2) / 12)
    assert precision_at_k(ids, labels, DB_LABELS, 1) == pytest.approx(2 / 3)
    assert top1_accuracy(ids, labels, DB_LABELS) == pytest.approx(2 / 3)


def paper_map_at_k(ids, query_labels, db_labels, k):
    """The paper's code (RAIVNLab/MRL retrieval/compute_metrics.py): sum of precisions at hits, over k."""
    aps = []
    for i in range(len(ids)):
        matches = db_labels[ids[i, :k]] == query_labels[i]
        precs = np.cumsum(matches) / np.arange(1, k + 1)
        aps.append(precs[matches].sum() / k)
    return np.mean(aps)


def test_map_equals_the_papers_when_every_class_has_k_members():
    rng = np.random.default_rng(0)
    db_labels = rng.integers(0, 5, 2000)  # ~400 members per class, far more than k
    query_labels = rng.integers(0, 5, 300)
    ids = np.stack([rng.permutation(2000)[:100] for _ in range(300)])
    for k in (10, 25, 50, 100):
        assert mean_average_precision_at_k(ids, query_labels, db_labels, k) == pytest.approx(
            paper_map_at_k(ids, query_labels, db_labels, k))


def test_missing_neighbours_count_as_irrelevant():
    # -1 must not wrap around to the last database row (whose label matches the query here)
    ids = np.array([[8, -1, -1]])
    labels = np.array([2])
    assert precision_at_k(ids, labels, DB_LABELS, 3) == pytest.approx(1 / 3)
    assert average_precision_at_k(ids, labels, DB_LABELS, 3)[0] == pytest.approx(1 / 2)
    assert top_k_overlap(np.array([[-1, -1]]), np.array([[-1, -1]]), 2) == 0.0


def test_query_whose_class_is_absent_scores_zero():
    assert average_precision_at_k(np.array([[0, 1]]), np.array([7]), DB_LABELS, 2)[0] == 0.0


def test_overlap_and_recall_against_a_reference():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[2, 1, 9, 4], [9, 5, 6, 7]])
    assert top_k_overlap(found, ref, 4) == pytest.approx((3 + 3) / 8)
    assert top_k_overlap(found, ref, 2) == pytest.approx((2 + 1) / 4)  # {2, 1} and {5}
    assert nn_recall_at_k(found, ref, 1) == 0.0          # neither query finds its exact nearest neighbour first
    assert nn_recall_at_k(found, ref, 2) == pytest.approx(1.0)
    assert top_k_overlap(torch.from_numpy(ref), ref, 4) == 1.0
    # an empty slot (-1, from an approximate index) is not a neighbour, even where the reference's is empty too
    assert nn_recall_at_k(np.array([[-1, 2]]), np.array([[-1, 5]]), 2) == 0.0
    # a repeated id (from an outside tool) is one neighbour, not one per repeat
    assert top_k_overlap(np.array([[7, 7, 7, 7]]), np.array([[7, 1, 2, 3]]), 4) == 0.25
    assert tie_aware_overlap(np.array([[7, 7, 7, 7]]), [[0.9] * 4], np.array([[7, 1, 2, 3]]), [[0.9, 0.8, 0.7, 0.6]],
                             4) == 0.25


def test_tie_aware_overlap_counts_a_tie_at_the_kth_score_and_nothing_worse():
    ref, ref_scores = np.array([[1, 2, 3]]), np.array([[0.9, 0.8, 0.7]])
    # 7 ties the 3rd (another copy of the same vector); 8 is worse; -1 is an empty slot
    assert tie_aware_overlap(np.array([[1, 2, 7]]), [[0.9, 0.8, 0.7]], ref, ref_scores, 3) == 1.0
    assert tie_aware_overlap(np.array([[1, 2, 8]]), [[0.9, 0.8, 0.6]], ref, ref_scores, 3) == pytest.approx(2 / 3)
    assert tie_aware_overlap(np.array([[1, 2, -1]]), [[0.9, 0.8, -np.inf]], ref, ref_scores, 3) == pytest.approx(2 / 3)
    assert top_k_overlap(np.array([[1, 2, 7]]), ref, 3) == pytest.approx(2 / 3)
    # l2: distances, smaller is better
    assert tie_aware_overlap(np.array([[1, 2, 7]]), [[0.1, 0.2, 0.3]], ref, [[0.1, 0.2, 0.3]], 3, metric="l2") == 1.0
    assert tie_aware_overlap(np.array([[1, 2, 7]]), [[0.1, 0.2, 0.4]], ref, [[0.1, 0.2, 0.3]], 3, metric="l2") == \
        pytest.approx(2 / 3)


def test_per_dim_evaluation_of_a_database_under_8_dims_scores_its_full_dim():
    rng = np.random.default_rng(0)
    db, q = rng.standard_normal((100, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    assert list(evaluate_retrieval_per_dim(db, q, ks=(5,))) == [4]  # it returned {}
    assert list(evaluate_retrieval_per_dim(np.hstack([db] * 5), q.repeat(5, 1), ks=(5,))) == [10, 20]


def test_retrieval_metrics_names_every_value():
    ids = np.array([[0, 6, 1, 7], [6, 7, 0, 1]])
    out = retrieval_metrics(ids, np.array([0, 1]), DB_LABELS, ks=(2, 4), reference_ids=ids)
    assert list(out) == ["top1", "mAP@2", "mAP@4", "P@2", "P@4", "nn_recall@2", "nn_recall@4", "overlap@2", "overlap@4"]
    assert out["overlap@4"] == 1.0 and out["nn_recall@2"] == 1.0 and out["top1"] == 1.0


def test_metric_errors_name_the_problem():
    ids = np.array([[0, 1]])
    with pytest.raises(ValueError, match="hold 2 neighbours per query but k=10; search with top_k >= 10"):
        precision_at_k(ids, np.array([0]), DB_LABELS, 10)
    with pytest.raises(ValueError, match="query_labels has 2 labels but ids has 1 rows"):
        precision_at_k(ids, np.array([0, 1]), DB_LABELS, 2)
    with pytest.raises(TypeError, match="integer numpy array"):
        precision_at_k(ids.astype(float), np.array([0]), DB_LABELS, 2)
    with pytest.raises(ValueError, match="database row 20 but database_labels has only 10"):
        precision_at_k(np.array([[20, 1]]), np.array([0]), DB_LABELS, 2)
    with pytest.raises(ValueError, match="pass both query_labels and database_labels"):
        retrieval_metrics(ids, np.array([0]))


@pytest.fixture(scope="module")
def digits_pca():
    """Real data: sklearn's 8x8 digits, PCA-rotated so that earlier dims carry more variance (not MRL-trained)."""
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)).astype(np.float32)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt.T
    return z[300:], y[300:], z[:300], y[:300]


def test_per_dim_evaluation_on_digits(digits_pca):
    db, db_y, q, q_y = digits_pca
    out = evaluate_retrieval_per_dim(db, q, q_y, db_y, dims=[2, 8, 32, 64], ks=(10, 25))
    assert list(out) == [2, 8, 32, 64]
    full = out[64]
    assert full["overlap@10"] == 1.0 and full["nn_recall@10"] == 1.0
    assert full["top1"] > 0.93 and full["mAP@10"] > 0.85   # measured: 0.953 and 0.890 (cosine on digit pixels)
    assert out[2]["mAP@10"] < out[8]["mAP@10"] < full["mAP@10"] + 0.02
    assert out[2]["overlap@10"] < out[8]["overlap@10"] < out[32]["overlap@10"] <= 1.0
    # the same numbers straight from an index
    index = MatryoshkaIndex(db, backend="torch")
    ids8 = index.search(q, 25, dim=8).ids
    assert out[8]["P@25"] == pytest.approx(precision_at_k(ids8, q_y, db_y, 25))
    with pytest.raises(ValueError, match="choose ks <= 1497"):
        evaluate_retrieval_per_dim(index, q, q_y, db_y, ks=(2000,))


def test_a_repeated_id_counts_once_and_tie_aware_overlap_checks_its_inputs():
    ids = np.array([[0, 0, 0], [2, 0, 2]])
    # AP@3 of [0, 0, 0] with one relevant row was 3.0 and P@3 1.0
    np.testing.assert_allclose(average_precision_at_k(ids, [1, 1], [1, 0, 1, 0], 3), [0.5, 1.0])
    assert precision_at_k(ids, [1, 1], [1, 0, 1, 0], 3) == pytest.approx((1 / 3 + 2 / 3) / 2)
    rng = np.random.default_rng(0)  # rows without repeats: the same numbers as before
    ids = np.argsort(rng.random((20, 30)), axis=1)[:, :10]
    q, db = rng.integers(0, 3, 20), rng.integers(0, 3, 30)
    rel = db[ids] == q[:, None]
    assert precision_at_k(ids, q, db, 10) == pytest.approx(rel.mean())
    args = (np.array([[0, 9]]), np.array([[0.0, 5.0]]), np.array([[0, 5]]), np.array([[0.0, 2.0]]), 2)
    with pytest.raises(ValueError, match="metric='L2' must be 'cosine', 'ip'"):
        tie_aware_overlap(*args, metric="L2")  # was read as a similarity: 1.0 where 'l2' gives 0.5
    with pytest.raises(ValueError, match="hold NaN"):
        tie_aware_overlap(args[0], np.array([[0.0, np.nan]]), *args[2:])
