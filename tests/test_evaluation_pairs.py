import numpy as np
import pytest


def test_pair_query_ranks_count_the_candidates_above_the_best_relevant_one():
    from mrl_hf.evaluation.pairs import pair_query_ranks, pair_retrieval_metrics

    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = np.array([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.9]])
    ranks = pair_query_ranks(queries, candidates, [1, 2], relevant=[[2], [1], [0, 3]])
    assert ranks[2].tolist() == [3, 0, 0]
    # at 1 dim every prefix is +-1, or 0 for query 1 (normalised to 0): a tie counts against the relevant candidate,
    # so the collapsed query ranks its answer behind the 3 others (it used to be credited with rank 0)
    assert ranks[1].tolist() == [3, 3, 0]
    metrics = pair_retrieval_metrics(queries, candidates, [1, 2], relevant=[[2], [1], [0, 3]], ks=(1,))
    for m in (1, 2):
        assert metrics[m]["hit@1"] == pytest.approx(float((ranks[m] < 1).float().mean()))
    import torch  # one relevant candidate per query, given as a tensor
    assert pair_query_ranks(queries, candidates, [2], relevant=torch.tensor([2, 1, 0]))[2].tolist() == \
        pair_query_ranks(queries, candidates, [2], relevant=[2, 1, 0])[2].tolist()


def test_non_finite_embeddings_are_refused_not_scored():
    """A NaN score ranked the relevant candidate first: NaN queries scored 100% hit@1; zero-shot and nearest-class-mean
    took class 0 for NaN rows; quantized_retrieval_metrics ranked them too."""
    import torch

    from mrl_hf.evaluation.classification import nearest_class_mean_accuracy
    from mrl_hf.evaluation.pairs import pair_retrieval_metrics
    from mrl_hf.evaluation.zero_shot import zero_shot_accuracy
    from mrl_hf.quantization import quantized_retrieval_metrics

    rng = np.random.default_rng(0)
    good, bad = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    bad[2, 3] = np.nan
    for call in (lambda: pair_retrieval_metrics(bad, good, [8]), lambda: pair_retrieval_metrics(good, bad, [8]),
                 lambda: quantized_retrieval_metrics(bad, good, [8], ["binary"])):
        with pytest.raises(ValueError, match=r"has NaN or inf values in row\(s\) 2"):
            call()
    with pytest.raises(ValueError, match=r"test_x has NaN or inf values in row\(s\) 2"):
        nearest_class_mean_accuracy(good, [0, 1, 0, 1], bad, [0, 0, 0, 0], [8])
    with pytest.raises(ValueError, match=r"NaN or inf values in row\(s\) 2"):
        zero_shot_accuracy(torch.from_numpy(bad), [0, 0, 0, 0], torch.from_numpy(good[:2]), [8])


def test_huge_finite_float64_values_are_not_taken_for_inf():
    """The float64 sum of finite values near its maximum overflows: the bad-row search found none and crashed."""
    import torch

    from mrl_hf.embeddings import _check_finite
    from mrl_hf.evaluation.classification import per_dim_accuracy

    _check_finite(torch.tensor([[1e308, 1e308], [0.0, 1.0]], dtype=torch.float64), "x")
    assert per_dim_accuracy(np.array([[[1e308, 1e307], [0.0, 1.0]]]), np.array([0, 1]), [2]) == {2: 100.0}
