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
