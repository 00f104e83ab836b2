"""Matryoshka fine-tuning side by side: mrl_hf's MRLTrainer (with and without the teacher term that keeps what the
model knew) against sentence-transformers' ``MatryoshkaLoss(MultipleNegativesRankingLoss)``.

Same model (the packaged all-MiniLM-L6-v2), same data (chatterbot-corpus, 80% of the questions: the demo's split),
same hyper-parameters (1 epoch, batch 32, lr 5e-5, 10% warmup, max length 32, temperature 0.05 = scale 20, every size
weighted 1), same seed per run. Scored at every size (each prefix L2-normalised) on
- in domain: the held-out 20% of chatterbot questions -> their answers (hit@10);
- out of domain: rotten-tomatoes review -> plot of the same movie (2,000 reviews, 1,083 plots; hit@10), text the
  fine-tune never saw.
Prints one table per set (mean over seeds, with the min-max spread) and the training time of each run, then each
mrl_hf method minus sentence-transformers per size with a 95% bootstrap interval over the queries (paired: the same
queries and seeds on both sides), which says whether a difference is larger than the evaluation set can resolve.

    python benchmarks/bench_finetune_vs_st.py                          # 3 seeds, teacher weights 0 and 10
    python benchmarks/bench_finetune_vs_st.py --seeds 0 --teacher-weights 0.5,1,2
    python benchmarks/bench_finetune_vs_st.py --teacher-weights 0 --mean-centering   # + each model centred
    python benchmarks/bench_finetune_vs_st.py --embed-duplicates-once --mean-centering  # repeated texts embedded once
    python benchmarks/bench_finetune_vs_st.py --teacher-weights 0,10 --rotation-lr 1e-2  # + an output rotation
    python benchmarks/bench_finetune_vs_st.py --teacher-weights 10 --rotation-lr 1e-2 --freeze-bottom 1  # + frozen
    python benchmarks/bench_finetune_vs_st.py --teacher-weights "" --st-symmetric  # the peer alone, both directions

sentence-transformers' ``MultipleNegativesRankingLoss`` ranks the positives for each anchor only, as it ships;
mrl_hf's nested InfoNCE is symmetric (it also ranks the anchors for each positive). ``--st-symmetric`` gives the peer
the same objective (``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import machine, print_table  # noqa: E402

from mrl_hf.adaptor import mean_centering  # noqa: E402
from mrl_hf.data.text import load_chatterbot_pairs, load_review_to_plot  # noqa: E402
from mrl_hf.evaluation.pairs import group_pairs, pair_query_ranks  # noqa: E402
from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs  # noqa: E402

EPOCHS, BATCH, LR, WARMUP, MAX_LENGTH = 1.0, 32, 5e-5, 0.1, 32
EVAL_LENGTH = 256  # all-MiniLM-L6-v2's own max_seq_length: evaluation reads whole plots, not the training's 32 tokens


def st_finetune(path, train, seed, output_dir, symmetric=False):
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = MAX_LENGTH
    # as shipped, MultipleNegativesRankingLoss ranks positives for each anchor only; mrl_hf's nested InfoNCE also
    # ranks anchors for each positive (symmetric). symmetric=True gives the peer that objective too.
    directions = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if symmetric else {}
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=20.0, **directions),
                          matryoshka_dims=NESTING[::-1])
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=WARMUP, seed=seed, logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True)
    data = Dataset.from_dict({"anchor": [r["anchor"] for r in train], "positive": [r["positive"] for r in train]})
    start = time.perf_counter()
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss).train()
    return model, time.perf_counter() - start


def mrl_finetune(path, train, seed, output_dir, teacher_weight, teacher_sizes="full", embed_duplicates_once=False,
                 rotation_lr=None, freeze=None):
    from transformers import TrainingArguments

    from mrl_hf import MRLTrainer, add_output_rotation, freeze_bottom
    from mrl_hf.data.collator import PairCollator
    from mrl_hf.modeling import MRLBertModel

    torch.manual_seed(seed)
    model = MRLBertModel.from_pretrained(path, nesting_list=NESTING, embed_duplicates_once=embed_duplicates_once)
    if rotation_lr:
        add_output_rotation(model)
    if freeze is not None:
        freeze_bottom(model, freeze)
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=WARMUP, seed=seed, logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=True)
    trainer = MRLTrainer(model=model, args=args, train_dataset=train, teacher_weight=teacher_weight,
                         teacher_sizes=teacher_sizes, rotation_learning_rate=rotation_lr,
                         data_collator=PairCollator(model.tokenizer, max_length=MAX_LENGTH))
    start = time.perf_counter()
    trainer.train()
    return model.eval(), time.perf_counter() - start


def encode(model, texts):
    if hasattr(model, "config") and hasattr(model.config, "nesting_list"):  # mrl_hf: the full vector, raw
        return model.encode(texts, batch_size=64, truncate_dim=model.config.matryoshka_embedding_dim, normalize=False,
                            max_length=EVAL_LENGTH)
    model.max_seq_length = EVAL_LENGTH
    return model.encode(texts, batch_size=64)


def score(model, sets, mean=None):
    """``{set name: {dim: hit@10 in %}}`` and ``{set name: {dim: (queries,) bool hit@10 per query}}``; with
    ``mean``, the L2-normalised vectors minus ``mean`` are scored (what ``mrl_hf.adaptor.mean_centering`` attached
    to the model gives)."""
    def embed(texts):
        x = encode(model, texts)
        return x if mean is None else x / np.linalg.norm(x, axis=1, keepdims=True) - mean

    out, hits = {}, {}
    for name, (queries, corpus, relevant) in sets.items():
        q, c = embed(queries), embed(corpus)
        hits[name] = {m: (rank < 10).numpy() for m, rank in pair_query_ranks(q, c, NESTING, relevant).items()}
        out[name] = {m: 100 * float(hit.mean()) for m, hit in hits[name].items()}
    return out, hits


def paired_difference(ours: list[np.ndarray], theirs: list[np.ndarray], resamples: int = 2000, seed: int = 0):
    """Mean hit@10 difference in points (``ours - theirs``, per query averaged over seeds) and its 95% bootstrap
    interval over the queries."""
    per_query = 100 * (np.mean(ours, axis=0).astype(float) - np.mean(theirs, axis=0).astype(float))
    rows = np.random.default_rng(seed).integers(0, len(per_query), (resamples, len(per_query)))
    low, high = np.percentile(per_query[rows].mean(1), [2.5, 97.5])
    return per_query.mean(), low, high


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher-weights", default="0,10",
                        help="comma-separated; each is an mrl_hf run per seed")
    parser.add_argument("--teacher-sizes", default="full", choices=["full", "all"],
                        help="where the teacher term applies (MRLTrainer's teacher_sizes)")
    parser.add_argument("--embed-duplicates-once", action="store_true", help="mrl_hf runs embed each distinct text of "
                        "a batch once (config.embed_duplicates_once; 4 chatterbot pairs make up a third of the rows)")
    parser.add_argument("--mean-centering", action="store_true", help="also score every fine-tuned model with the "
                        "mean of its training texts' normalised vectors subtracted (mrl_hf.adaptor.mean_centering)")
    parser.add_argument("--rotation-lr", type=float, help="mrl_hf runs also train an output rotation "
                        "(mrl_hf.add_output_rotation) at this learning rate (MRLTrainer's rotation_learning_rate)")
    parser.add_argument("--freeze-bottom", type=int, metavar="BLOCKS", help="mrl_hf runs keep the embedding layer "
                        "and the first BLOCKS transformer blocks frozen (mrl_hf.freeze_bottom; 0: the embedding "
                        "layer only)")
    parser.add_argument("--st-symmetric", action="store_true", help="run sentence-transformers' loss in both "
                        "directions (anchor->positive and positive->anchor), as mrl_hf's nested InfoNCE is; by "
                        "default it runs as shipped, anchor->positive only")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.teacher_weights.split(",") if w.strip()]  # "" runs the peer alone
    torch.set_num_threads(os.cpu_count() or 1)

    path = packaged_minilm()
    train, test = split_pairs(load_chatterbot_pairs(), seed=0)
    queries, answers, relevant = group_pairs(test)
    training_texts = sorted({row[k] for row in train for k in ("anchor", "positive")})
    sets = {"in domain: chatterbot q->a": (queries, answers, relevant),
            "out of domain: review->plot": load_review_to_plot()}
    from sentence_transformers import SentenceTransformer

    original = SentenceTransformer(path, device="cpu")
    results = {"original, sliced": [score(original, sets)[0]]}
    hits = {}
    def training_mean(model):  # what mrl_hf.adaptor.mean_centering subtracts, fitted on the training texts
        return mean_centering(encode(model, training_texts)).mean.numpy()

    if args.mean_centering:
        results["original + mean_centering"] = [score(original, sets, training_mean(original))[0]]
    seconds = {}
    methods = [("sentence-transformers MatryoshkaLoss" + (" (symmetric)" if args.st_symmetric else ""), None)] + [
        (f"mrl_hf MRLTrainer, teacher_weight={w:g}" + (" (all sizes)" if w and args.teacher_sizes == "all" else "")
         + (", embed_duplicates_once" if args.embed_duplicates_once else "")
         + (f", rotation lr {args.rotation_lr:g}" if args.rotation_lr else "")
         + (f", freeze_bottom={args.freeze_bottom}" if args.freeze_bottom is not None else ""), w)
        for w in weights]
    for seed in seeds:
        for name, weight in methods:
            with tempfile.TemporaryDirectory() as tmp:
                model, took = (st_finetune(path, train, seed, tmp, args.st_symmetric) if weight is None
                               else mrl_finetune(path, train, seed, tmp, weight, args.teacher_sizes,
                                                 args.embed_duplicates_once, args.rotation_lr, args.freeze_bottom))
            scored, per_query = score(model, sets)
            results.setdefault(name, []).append(scored)
            hits.setdefault(name, []).append(per_query)
            seconds.setdefault(name, []).append(took)
            print(f"seed {seed} {name}: {took:.1f} s {results[name][-1]}", flush=True)
            if args.mean_centering:  # fitted on the fine-tune's own training texts, no labels
                scored, per_query = score(model, sets, training_mean(model))
                results.setdefault(f"{name} + mean_centering", []).append(scored)
                hits.setdefault(f"{name} + mean_centering", []).append(per_query)

    print(f"\n# all-MiniLM-L6-v2, {len(train)} chatterbot pairs, {EPOCHS:g} epoch, batch {BATCH}, lr {LR:g}, seeds "
          f"{seeds}; hit@10 (%) per size, mean over seeds [min-max]; {machine('cpu')}")
    for set_name in sets:
        rows = []
        for method, runs in results.items():
            values = np.array([[run[set_name][m] for m in NESTING] for run in runs])
            cells = [f"{v:.1f}" if len(runs) == 1 else f"{v:.1f} [{lo:.1f}-{hi:.1f}]"
                     for v, lo, hi in zip(values.mean(0), values.min(0), values.max(0))]
            train_s = f"{np.mean(seconds[method]):.1f}" if method in seconds else "-"
            rows.append([method, train_s, *cells])
        print(f"\n{set_name}")
        print_table(["method", "train s", *[str(m) for m in NESTING]], rows)
    peer = methods[0][0]
    for set_name in sets:
        rows = []
        for method in hits:
            if method.startswith("mrl_hf"):
                reference = peer + (" + mean_centering" if method.endswith(" + mean_centering") else "")
                cells = [paired_difference([run[set_name][m] for run in hits[method]],
                                           [run[set_name][m] for run in hits[reference]]) for m in NESTING]
                rows.append([f"{method} - {reference}", *[f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" for d, lo, hi in cells]])
        print(f"\n{set_name}: hit@10 difference in points, mean of seeds [95% bootstrap interval over queries]")
        print_table(["methods", *[str(m) for m in NESTING]], rows)
    st = np.mean(seconds[peer])
    print("\ntraining time vs sentence-transformers: " + ", ".join(
        f"{name}: {np.mean(s) / st:.2f}x" for name, s in seconds.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine("cpu"), "seeds": seeds, "results": results, "seconds": seconds,
                       "hits": {k: [{s: {m: v.tolist() for m, v in r.items()} for s, r in run.items()} for run in runs]
                                for k, runs in hits.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
