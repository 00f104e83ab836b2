"""Exact, adaptive and funnel retrieval over Matryoshka embeddings with ``MatryoshkaIndex``.

Runs in a few seconds on random data whose low dims carry most of the variance (as a Matryoshka
model's do). With real embeddings, pass the (n, d) array your model returns instead.

    python examples/retrieval.py [--size 20000] [--dim 256]
"""
import argparse
import tempfile

import numpy as np

from mrl_hf.evaluation import retrieval_metrics
from mrl_hf.retrieval import MatryoshkaIndex


def main():
    parser = argparse.ArgumentParser(description="Exact, adaptive and funnel retrieval with MatryoshkaIndex on "
                                                 "synthetic Matryoshka-like vectors (a few seconds).")
    parser.add_argument("--size", type=int, default=20_000, help="database size (default 20,000)")
    parser.add_argument("--dim", type=int, default=256, help="embedding size, >= 32 (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n, dim, n_classes = args.size, args.dim, 50
    scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32) * scale
    labels = rng.integers(0, n_classes, n + 100)
    vectors = centres[labels] + 1.5 * rng.standard_normal((n + 100, dim), dtype=np.float32) * scale
    database, queries = vectors[:n], vectors[n:]
    db_labels, query_labels = labels[:n], labels[n:]

    # backend="auto" uses FAISS when installed (pip install 'mrl-hf[faiss]'), pure torch otherwise.
    # index_type="ivf" or "hnsw" (FAISS only) makes the whole-database stage approximate and fast.
    index = MatryoshkaIndex(database, metric="cosine")

    exact = index.search(queries, 10)                            # full dim, every vector scored
    low = index.search(queries, 10, dim=32)                      # the first 32 dims only
    adaptive = index.adaptive_search(queries, 10, shortlist_dim=16, rerank_dim=dim, shortlist_k=200)
    funnel = index.funnel_search(queries, 10)                    # 16->32->64->128->256, 200->100->50->25->10

    for name, result in [(f"exact @{dim}", exact), ("exact @32", low), (f"adaptive 16->{dim}", adaptive),
                         ("funnel", funnel)]:
        m = retrieval_metrics(result.ids, query_labels, db_labels, ks=(10,), reference_ids=exact.ids)
        print(f"{name:18s} mAP@10={m['mAP@10']:.3f}  top-10 overlap with exact={m['overlap@10']:.3f}  "
              f"{result.cost.mflops_per_query:6.2f} MFLOPs/query  {result.cost.ms_per_query:.3f} ms/query")

    scores, ids = adaptive  # results unpack like FAISS's: arrays of shape (n_queries, top_k)
    print("query 0:", ids[0, :5], np.round(scores[0, :5], 3))

    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/index")                               # a failed or killed save keeps the old one
        again = MatryoshkaIndex.load(f"{tmp}/index")
        assert (again.adaptive_search(queries, 10, 16, dim).ids == ids).all()
    print(index)


if __name__ == "__main__":
    main()
