"""The same search plans in MatryoshkaIndex and in Qdrant Edge (Qdrant's engine in-process), on real vectors.

Data: the MRL fine-tuned MiniLM vectors of ``bench_quantized.py --data passages`` (cached there; encoding them takes
about 30 minutes on 2 cores), a random ``--n`` of the database and its first ``--queries`` held-out queries. For each
plan: ms/query and recall@10 (against exact float32 search at full size) of both, the top-10 overlap between them, and
the rows where they agree exactly. Our index runs from a saved folder loaded with ``mmap=True``; Qdrant Edge from its
shard folder (full vectors on disk, codes in RAM), one ``query_batch`` per 64 queries. Both are timed after a warm-up
pass, best of 3. Qdrant Edge's RAM is not measured (the engine reports none); its shard's size on disk is printed.

    python benchmarks/bench_qdrant_edge.py --n 50000 --queries 500
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quantized import mrl_encoded, offline_passages  # noqa: E402

from mrl_hf.evaluation import top_k_overlap  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan  # noqa: E402
from mrl_hf.retrieval.qdrant_edge import export_to_qdrant_edge, qdrant_edge_search  # noqa: E402
from mrl_hf.retrieval.tuner import markdown_table  # noqa: E402

PLANS = [SearchPlan(384, "binary", "flat", 200), SearchPlan(256, "binary", "flat", 400),
         SearchPlan(192, "binary", "hnsw", 100, ef_search=128), SearchPlan(128, "int8", "hnsw", 100, ef_search=128),
         SearchPlan(384, "int8", "hnsw", 50, ef_search=128)]


def best_of(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--cache", default="outputs/bench_quantized_cache")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(2)
    db, queries = mrl_encoded(offline_passages, os.path.join(args.cache, "mrl_passages.npy"), 1000)
    db = db[np.sort(np.random.default_rng(0).permutation(len(db))[:args.n])]
    queries = queries[:args.queries]
    print(f"# MRL fine-tuned MiniLM, {len(db):,} real texts x {db.shape[1]}, {len(queries)} held-out queries, top-10")
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, faiss {faiss.__version__}, qdrant-edge-py "
          f"{version('qdrant-edge-py')}, {time.strftime('%Y-%m-%d')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        MatryoshkaIndex(db, metric="cosine", copy=False).save(tmp + "/ix")
        index = MatryoshkaIndex.load(tmp + "/ix", mmap=True)
        exact = index.search(queries, 10, exact=True).ids
        start = time.perf_counter()
        shard = export_to_qdrant_edge(index, tmp + "/shard", PLANS)
        print(f"Qdrant Edge export (upsert + optimize, {len(PLANS)} plans): {time.perf_counter() - start:.0f} s, "
              f"shard on disk {folder_bytes(tmp + '/shard') / len(db):,.0f} B/vector")
        for plan in PLANS:
            ours, ours_s = best_of(lambda: index.search_plan(queries, 10, plan).ids)
            (_, edge), edge_s = best_of(lambda: qdrant_edge_search(shard, queries, plan, 10))
            rows.append([plan.describe(), f"{1e3 * ours_s / len(queries):.3f}", f"{top_k_overlap(ours, exact, 10):.4f}",
                         f"{1e3 * edge_s / len(queries):.3f}", f"{top_k_overlap(edge, exact, 10):.4f}",
                         f"{top_k_overlap(edge, ours, 10):.4f}", f"{(edge == ours).all(axis=1).mean():.3f}"])
        shard.close()
    print(markdown_table(["plan", "ours ms/query", "ours recall@10", "Edge ms/query", "Edge recall@10",
                          "top-10 overlap Edge vs ours", "rows identical"], rows))


if __name__ == "__main__":
    main()
