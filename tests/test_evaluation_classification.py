"""Per-dim classification evaluators, baselines and the results table, on synthetic data with known answers."""
import json

import numpy as np
import pytest
import torch

from mrl_hf.evaluation.classification import (baseline_features, evaluate_baselines, evaluate_embeddings,
                                              knn_accuracy, linear_probe_accuracy, nearest_class_mean_accuracy,
                                              oracle_accuracy, per_dim_accuracy)
from mrl_hf.evaluation.table import ResultsTable


def ordered_data(n=400, d=16, seed=0):
    """Class signal lives in the first 2 features only; the rest is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = np.array([[3, 0], [-3, 0], [0, 3], [0, -3]], dtype=np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, :2] += centres[y]
    x[:, 2:] *= 3
    return x, y


def test_prefix_evaluators_see_only_the_first_m_features():
    x, y = ordered_data()
    xt, yt = ordered_data(seed=1)
    probe = linear_probe_accuracy(x, y, xt, yt, [1, 2, 16])
    assert probe[2] > 95 and probe[1] < 75 and probe[16] > 90
    knn = knn_accuracy(x, y, xt, yt, [2, 16], k=1)
    assert knn[2][0] > 90 and knn[16][0] < knn[2][0] - 10  # noise features hurt 1-NN
    assert all(top5 == 100.0 for _, top5 in knn.values())  # only 4 classes: top-5 always hits
    ncm = nearest_class_mean_accuracy(x, y, xt, yt, [2], shots=5)
    assert ncm[2] > 90


def test_knn_matches_brute_force_and_votes():
    rng = np.random.default_rng(0)
    db, q = rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal((20, 4)).astype(np.float32)
    dby, qy = rng.integers(0, 7, 50), rng.integers(0, 7, 20)
    nearest = np.argmax((q / np.linalg.norm(q, axis=1, keepdims=True)) @
                        (db / np.linalg.norm(db, axis=1, keepdims=True)).T, axis=1)
    assert knn_accuracy(db, dby, q, qy, [4])[4][0] == pytest.approx(100 * np.mean(dby[nearest] == qy))
    # l2 metric and 3-NN majority vote on a hand-made case
    db = np.array([[0.0], [0.1], [0.2], [5.0]], dtype=np.float32)
    assert knn_accuracy(db, [1, 0, 0, 1], np.array([[0.0]], np.float32), [0], [1], k=3, metric="l2")[1][0] == 100
    assert knn_accuracy(db, [1, 0, 0, 1], np.array([[0.0]], np.float32), [0], [1], k=1, metric="l2")[1][0] == 0


def test_knn_never_credits_a_class_the_database_does_not_hold():
    """With 2 classes in the database, top-5 used to rank the query-only class 7 too and count it a hit."""
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    assert knn_accuracy(db, [0, 1] * 10, q, [7] * 5, [4], k=1) == {4: (0.0, 0.0)}
    assert knn_accuracy(db, [0, 1] * 10, q, [0, 1, 7, 0, 1], [4], k=1)[4][1] == 80.0


def test_knn_top5_ranks_classes_by_their_nearest_neighbour_however_far():
    """60 points of class 0 nearest the query, then one point of each class 1..7, in order: top-5 is classes 0-4
    (it used to look at the 50 nearest points only, and filled the top 5 with arbitrary far classes). Sparse class
    ids (a million) are fine."""
    db = np.arange(67, dtype=np.float32)[:, None]
    labels = np.array([0] * 60 + list(range(1, 8)))
    query = np.zeros((1, 1), np.float32)
    for query_class, in_top5 in ((1, True), (4, True), (5, False), (7, False)):
        top1, top5 = knn_accuracy(db, labels, query, [query_class], [1], metric="l2")[1]
        assert (top1, top5) == (0.0, 100.0 if in_top5 else 0.0), query_class
        sparse = knn_accuracy(db, labels * 1_000_000, query, [query_class * 1_000_000], [1], metric="l2")[1]
        assert sparse == (top1, top5)


def test_baselines_svd_orders_by_variance_and_jl_preserves_geometry():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32) * np.array([1, 1, 1, 1, 1, 1, 1, 10], np.float32)
    svd, = baseline_features("SVD", x)
    assert abs(svd[:, 0]).std() > 5 and np.allclose(np.abs(svd[:, 0]), np.abs(x[:, 7] - x[:, 7].mean()), atol=0.5)
    first, = baseline_features("first-m", x)
    assert np.array_equal(first, x)
    jl_tr, jl_te = baseline_features("JL", x, [x[:5]], seed=3)
    # the same projection for every set (to float rounding: BLAS may sum 5 rows and 500 rows in different orders)
    np.testing.assert_allclose(jl_tr[:5], jl_te, rtol=1e-5, atol=1e-5)
    # a full-size Gaussian projection keeps distances within ~50%
    ratio = np.linalg.norm(jl_tr[0] - jl_tr[1]) / np.linalg.norm(x[0] - x[1])
    assert 0.3 < ratio < 2.0
    with pytest.raises(ValueError, match="baseline='PCA2' is not known"):
        baseline_features("PCA2", x)


def test_oracle_and_per_dim_accuracy():
    labels = np.array([0, 1, 1, 0])
    # dim 4 right on inputs 0,1; dim 8 right on 0,2; input 3 never right
    logits = np.zeros((2, 4, 2))
    logits[0, [0, 1], labels[[0, 1]]] = 1
    logits[0, [2, 3], 1 - labels[[2, 3]]] = 1
    logits[1, [0, 2], labels[[0, 2]]] = 1
    logits[1, [1, 3], 1 - labels[[1, 3]]] = 1
    out = oracle_accuracy(logits, labels, [4, 8])
    assert out == {"oracle": 75.0, "first_correct": {4: 50.0, 8: 25.0}, "never_correct": 25.0}
    assert per_dim_accuracy(torch.tensor(logits), labels, [4, 8]) == {4: 50.0, 8: 50.0}
    with pytest.raises(ValueError, match=r"shape \(\|M\|=3, N, num_classes\)"):
        oracle_accuracy(logits, labels, [2, 4, 8])


def test_tables_print_save_and_plot(tmp_path):
    x, y = ordered_data()
    xt, yt = ordered_data(seed=1)
    table = evaluate_embeddings(x, y, xt, yt, [1, 2, 4], method="MRL", metrics=("linear probe", "1-NN", "NCM 2-shot"))
    evaluate_baselines(x, y, xt, yt, [1, 2, 4], metrics=("1-NN",), table=table)
    assert table.methods == ["MRL", "SVD", "first-m", "JL"]
    assert set(table.metrics) == {"linear probe", "1-NN top-1", "1-NN top-5", "NCM 2-shot"}
    text = str(table)
    assert "| dim | MRL | SVD | first-m | JL |" in text and "| 2 |" in text
    table.to_csv(tmp_path / "r.csv")
    table.to_json(tmp_path / "r.json")
    assert ResultsTable.from_csv(tmp_path / "r.csv").records == table.records
    assert json.loads((tmp_path / "r.json").read_text()) == table.records
    table.plot("1-NN top-1", tmp_path / "r.png", title="test")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="metric='2NN' is not known"):
        evaluate_embeddings(x, y, xt, yt, [1], metrics=("2NN",))
    with pytest.raises(ValueError, match="dim=17 is out of range"):
        knn_accuracy(x, y, xt, yt, [17])
    with pytest.raises(ValueError, match="train_y must be 400 integer class ids"):
        linear_probe_accuracy(x, y[:10], xt, yt, [1])


def test_plot_leaves_the_users_backend_and_figures_alone(tmp_path):
    """It switched the whole process to Agg and closed its own figure: in a notebook nothing showed, then or after."""
    import matplotlib
    import matplotlib.pyplot as plt

    table = ResultsTable.from_fractions({"MRL": {8: {"hit@1": 0.5}, 16: {"hit@1": 0.6}}})
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        shown = table.plot("hit@1")
        assert matplotlib.get_backend() == "svg" and plt.fignum_exists(shown.figure.number)
        open_figures = plt.get_fignums()
        table.plot("hit@1", tmp_path / "r.png")  # drawn apart from pyplot: no figure left open
        assert plt.get_fignums() == open_figures and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
        table.plot("hit@1", tmp_path / "on_ax.png", ax=shown)  # a path with the user's axes saves their figure
        assert (tmp_path / "on_ax.png").is_file()
        on_subfigure = plt.figure().subfigures(1, 2)[0].subplots()
        table.plot("hit@1", tmp_path / "sub.png", ax=on_subfigure)  # saves the figure the subfigure is part of
        assert (tmp_path / "sub.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        plt.close("all")
        matplotlib.use(before)


def test_a_second_value_for_the_same_cell_is_refused():
    """Two runs evaluated into one table under the same method name used to keep both: the markdown showed the
    first value and the plot the last."""
    first, second = ResultsTable(), ResultsTable()
    first.add("MRL", "1-NN top-1", 8, 50.0)
    second.add("MRL", "1-NN top-1", 8, 70.0)
    with pytest.raises(ValueError, match=r"already has a result for method='MRL', metric='1-NN top-1', dim=8 \(50.0\)"):
        first + second
    with pytest.raises(ValueError, match="name the methods of different runs apart"):
        first.extend(second)
    assert first.series("MRL", "1-NN top-1") == {8: 50.0} and len(first) == 1


def test_knn_l2_survives_a_large_common_offset_and_bad_input_is_refused():
    from mrl_hf.evaluation.classification import knn_accuracy, oracle_accuracy, per_dim_accuracy

    rng = np.random.default_rng(0)  # tight classes 100 units from the origin: 2 q.a - |a|^2 lost them in float32
    centres = rng.normal(size=(10, 16)) * 0.01
    y, qy = rng.integers(0, 10, 2000), rng.integers(0, 10, 300)
    db = (100 + centres[y] + rng.normal(size=(2000, 16)) * 0.005).astype(np.float32)
    q = (100 + centres[qy] + rng.normal(size=(300, 16)) * 0.005).astype(np.float32)
    assert knn_accuracy(db, y, q, qy, [16], metric="l2")[16][0] == 100.0  # was 13.7
    with pytest.raises(ValueError, match="chunk_size=-1 must be an int >= 1"):
        knn_accuracy(db, y, q, qy, [16], chunk_size=-1)  # scored nothing and reported 0%
    with pytest.raises(ValueError, match="need at least one query"):
        knn_accuracy(db, y, q[:0], qy[:0], [16])
    logits, labels = rng.normal(size=(2, 50, 3)), rng.integers(0, 3, 50)
    with pytest.raises(ValueError, match=r"class indices in 0..2 .* got values in 1..3"):
        per_dim_accuracy(logits, labels + 1, [2, 4])  # 1-based labels scored 16% silently
    with pytest.raises(ValueError, match=r"nesting_list=\[4, 2\] is not strictly increasing"):
        oracle_accuracy(logits, labels, [4, 2])  # "first right at m" followed the list's order
    from mrl_hf.evaluation import image_text_retrieval

    with pytest.raises(ValueError, match=r"ks=\(0,\): every k must be an int >= 1"):
        image_text_retrieval(db[:5], q[:5], [16], ks=(0,))  # reported hit@0 = 0
