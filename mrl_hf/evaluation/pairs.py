"""Query -> answer retrieval quality at every embedding size: hit@k and MRR.

Each query has one or more relevant candidates; a query counts as a hit at k when any relevant candidate is
among its k most cosine-similar candidates (``hit@k``, also called success@k; not IR recall, which would count the
share of the relevant candidates found), and its reciprocal rank uses the best-ranked relevant one.
Embeddings are sliced to each size and L2-normalised after slicing (Matryoshka order).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..embeddings import _check_finite, inner_products, truncate_embeddings
from ..nesting import validate_dim


def pair_query_ranks(
    query_embeddings,
    candidate_embeddings,
    dims: Sequence[int],
    relevant: Sequence[int] | Sequence[Iterable[int]] | None = None,
) -> dict[int, torch.Tensor]:
    """``{m: (num_queries,) ranks}`` at every size ``m``: the 0-based rank of each query's best relevant candidate,
    ties counted against it, i.e. the number of other candidates at least as similar (``relevant`` as in
    ``pair_retrieval_metrics``): a prefix that collapses every text to one point is not credited with a hit."""
    q = torch.as_tensor(np.asarray(query_embeddings), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(candidate_embeddings), dtype=torch.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"query and candidate embeddings must be 2-D with the same size, got {tuple(q.shape)} "
                         f"and {tuple(c.shape)}.")
    if len(q) == 0 or len(c) == 0:
        raise ValueError("need at least one query and one candidate.")
    _check_finite(q, "query_embeddings")  # a NaN score would rank first and count as a hit
    _check_finite(c, "candidate_embeddings")
    relevance = _relevance_mask(relevant, len(q), len(c))
    ranks = {}
    for m in dims:
        m = validate_dim(m, q.shape[1], name="dim")
        sims = inner_products(truncate_embeddings(q, m, normalize=True), truncate_embeddings(c, m, normalize=True))
        ranks[m] = best_relevant_rank(sims, relevance)
    return ranks


TIES = ("against", "random")


def check_ties(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not supported; choose 'against' (a tie ranks the relevant candidate "
                         "below) or 'random' (the expectation over the order of tied candidates).")
    return ties


def rank_metrics(scores: torch.Tensor, relevance: torch.Tensor, ks: Sequence[int],
                 ties: str = "against") -> dict[str, float]:
    """``{"hit@k": .., "mrr": ..}`` (fractions) of ``scores`` ``(num_queries, num_candidates)``; a relevant candidate
    whose score is not finite (cut from a re-scored shortlist) is a miss.

    ``ties="against"``: a non-relevant candidate tied with the best relevant one ranks above it (a lower bound, and
    what a coarse score must not be credited with). ``ties="random"``: the expectation when tied candidates come in
    random order, what a search engine returns on average over the order of a corpus it breaks ties by."""
    hit = relevance & torch.isfinite(scores)
    found = hit.any(1)
    if check_ties(ties) == "random":
        return _expected_rank_metrics(scores, hit, found, ks)
    rank = best_relevant_rank(scores, hit).double()
    row = {f"hit@{k}": float(((rank < k) & found).double().mean()) for k in ks}
    row["mrr"] = float(torch.where(found, 1.0 / (rank + 1), 0.0).mean())
    return row


def _log_choose(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _expected_rank_metrics(scores: torch.Tensor, hit: torch.Tensor, found: torch.Tensor,
                           ks: Sequence[int]) -> dict[str, float]:
    """hit@k and MRR expected when the candidates tied with the best relevant one are taken in random order. With
    ``above`` non-relevant candidates scoring higher, ``tied`` non-relevant and ``r`` relevant ones at the best
    relevant score, the first relevant one is at position ``j`` (1-based) of the tied group with probability
    ``C(tied + r - j, r - 1) / C(tied + r, r)``."""
    best = scores.masked_fill(~hit, float("-inf")).max(1, keepdim=True).values
    at_best = scores == best
    above = ((scores > best) & ~hit).sum(1).double()
    tied = torch.where(found, (at_best & ~hit).sum(1), 0).double()  # a miss (-inf best) ties with nothing
    r = (at_best & hit).sum(1).double().clamp(min=1)  # rows without a relevant candidate are zeroed below
    j = torch.arange(1, int(tied.max()) + 2, dtype=torch.float64)[None, :]
    possible = j <= tied[:, None] + 1
    n, r = tied[:, None] + r[:, None], r[:, None]
    log_p = _log_choose(n - j, (r - 1).expand(-1, j.shape[1])) - _log_choose(n, r)
    p = torch.where(possible, log_p.exp(), 0.0)
    rank = above[:, None] + j - 1
    row = {f"hit@{k}": float(torch.where(found, (p * (rank < k)).sum(1), 0.0).mean()) for k in ks}
    row["mrr"] = float(torch.where(found, (p / (rank + 1)).sum(1), 0.0).mean())
    return row


def best_relevant_rank(scores: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``(num_queries,)`` 0-based rank of each row's best relevant candidate in ``scores`` (higher is better), a tie
    counted against it: the number of non-relevant candidates at least as good, whatever the candidates' order."""
    best = scores.masked_fill(~relevance, float("-inf")).max(1, keepdim=True).values
    return ((scores >= best) & ~relevance).sum(1)


def pair_retrieval_metrics(
    query_embeddings,
    candidate_embeddings,
    dims: Sequence[int],
    relevant: Sequence[int] | Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = (1, 10),
) -> dict[int, dict[str, float]]:
    """``{m: {"hit@1": .., "hit@10": .., "mrr": ..}}`` for every size ``m`` in ``dims``.

    ``relevant[i]`` is the index (or a collection of indices) of query i's relevant candidates; default
    ``i`` (the candidates are the queries' own answers, in order). Values are fractions in [0, 1].
    """
    results = {}
    for m, rank in pair_query_ranks(query_embeddings, candidate_embeddings, dims, relevant).items():
        row = {f"hit@{k}": float((rank < k).double().mean()) for k in ks}  # float64, as rank_metrics averages
        row["mrr"] = float((1.0 / (rank + 1).double()).mean())
        results[m] = row
    return results


def _relevance_mask(relevant, num_queries: int, num_candidates: int) -> torch.Tensor:
    if isinstance(relevant, torch.Tensor):
        relevant = relevant.tolist()
    if relevant is None:
        if num_queries > num_candidates:
            raise ValueError(f"{num_queries} queries but {num_candidates} candidates; pass relevant= to say "
                             "which candidates answer each query.")
        relevant = range(num_queries)
    if len(relevant) != num_queries:
        raise ValueError(f"relevant has {len(relevant)} entries but there are {num_queries} queries.")
    mask = torch.zeros(num_queries, num_candidates, dtype=torch.bool)
    for i, rel in enumerate(relevant):
        idx = [rel] if isinstance(rel, (int, np.integer)) else list(rel)
        if not idx:
            raise ValueError(f"query {i} has no relevant candidate.")
        bad = [j for j in idx if not 0 <= j < num_candidates]
        if bad:
            raise ValueError(f"relevant[{i}] contains {bad[0]}, outside 0..{num_candidates - 1}.")
        mask[i, idx] = True
    return mask


def pair_texts(pair) -> tuple[str, str]:
    """``(query, answer)`` of a ``(query, answer, ...)`` tuple or an ``{"anchor", "positive"}`` dict (unpacking a dict
    would give its keys: every query "anchor")."""
    if isinstance(pair, Mapping):
        return pair["anchor"], pair["positive"]
    query, answer, *_ = pair
    return query, answer


def group_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str], list[list[int]]]:
    """Unique queries, unique answers, and for each query the indices of all its answers: the input of
    ``pair_retrieval_metrics`` for (question, answer) data where questions and answers repeat. Pairs are
    ``(query, answer)`` tuples or ``{"anchor", "positive"}`` dicts (``split_pairs``' training pairs)."""
    queries, answers, relevant = [], [], []
    q_index, a_index = {}, {}
    for pair in pairs:
        query, answer = pair_texts(pair)
        if answer not in a_index:
            a_index[answer] = len(answers)
            answers.append(answer)
        if query not in q_index:
            q_index[query] = len(queries)
            queries.append(query)
            relevant.append([])
        rel = relevant[q_index[query]]
        if a_index[answer] not in rel:
            rel.append(a_index[answer])
    return queries, answers, relevant


def format_table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown table: one row per (model, dim), metrics in percent."""
    lines = ["| model | dim | hit@1 | hit@10 | MRR |", "|---|---|---|---|---|"]
    for name, per_dim in results.items():
        for m, row in per_dim.items():
            lines.append(f"| {name} | {m} | {100 * row['hit@1']:.1f} | {100 * row['hit@10']:.1f} | "
                         f"{100 * row['mrr']:.1f} |")
    return "\n".join(lines)
