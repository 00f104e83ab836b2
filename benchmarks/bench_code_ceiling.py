"""How good can a short binary code get on the demo's data? A ceiling for the quantisation-aware loss (CPU, offline).

The quantisation-aware target asks the loss to gain half of the gap between a prefix's float32 hit@10 and the
Hamming search of its sign bits, against the same recipe trained for float alone. Here the recipe is as simple as it
gets, so that only the loss differs: a linear projection ``(x - mean) @ W`` of fixed vectors, W (384 x m) started at
the principal axes and trained for m dims alone (no nesting) with a symmetric InfoNCE (temperature 0.05, Adam lr
1e-3, 200 epochs of batch 128 over the 1,302 training pairs), on

  float        the cosines of the projections (the float-only recipe; its sign bits are the post-hoc codes);
  codes (ste)  the cosines of their sign codes, the straight-through sign (codes alone: no float term to keep);
  codes (tanh) the same with a ``tanh(z / (0.5 rms z))`` surrogate.

"closed" is the share of the float projection's gap (its float32 minus its Hamming hit@10) that a code projection's
Hamming hit@10 gains; the code-only loss is the extreme of the quantisation-aware trade-off, so its share bounds
what any weighting of the two terms gains on this recipe. Trained on the training pairs, scored on the demo's held-out
149 questions over 176 answers, at 12 / 24 / 48 dims.

Encoders: the packaged all-MiniLM-L6-v2 untrained, and the demo recipe's float-only model (1 epoch, 41 steps; with
--rotation-lr the output rotation trained too), one per seed. Vectors: L2-normalised, minus the training texts' mean
(what ``mean_centering`` serves). Hit@10 % (mean over seeds) with a tie counted against the relevant answer, as
``quantized_retrieval_metrics`` scores, and, in brackets, its expectation when ties are broken at random.

    python benchmarks/bench_code_ceiling.py [--seeds 0 1 2] [--rotation-lr 1e-2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_quantization_aware import embed, train  # noqa: E402

from mrl_hf.data.text import load_chatterbot_pairs  # noqa: E402
from mrl_hf.evaluation.pairs import group_pairs  # noqa: E402
from mrl_hf.modeling import MRLBertModel  # noqa: E402
from mrl_hf.quantization import quantized_retrieval_metrics  # noqa: E402
from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs  # noqa: E402

SMALL = (12, 24, 48)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hit10(q: np.ndarray, c: np.ndarray, relevant, m: int, precision: str, ties: str = "against") -> float:
    return 100 * quantized_retrieval_metrics(q, c, [m], (precision,), relevant=relevant,
                                             ties=ties)[precision][m]["hit@10"]


def learn_projection(anchors, positives, start: np.ndarray, surrogate: str, seed: int, epochs: int = 200):
    """W (384, m) trained so that each pair's projections (``"float"``) or their sign codes find each other among the
    batch's."""
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.tensor(start.copy()))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    anchors, positives = torch.from_numpy(anchors), torch.from_numpy(positives)
    bits = weight.shape[1]

    def codes(z):
        if surrogate == "float":
            return F.normalize(z, dim=-1) * bits ** 0.5  # cosine, on the scale of the code similarities below
        if surrogate == "ste":
            return z + (torch.sign(z) - z).detach()
        return torch.tanh(z / (0.5 * z.pow(2).mean().sqrt().detach()))

    for _ in range(epochs):
        order = torch.randperm(len(anchors))
        for start_row in range(0, len(order) - 63, 128):
            rows = order[start_row:start_row + 128]
            scores = codes(anchors[rows] @ weight) @ codes(positives[rows] @ weight).T / bits / 0.05
            labels = torch.arange(len(rows))
            loss = F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach().numpy()


def measure(model, train_pairs, queries, answers, relevant, seed: int) -> dict:
    training_texts = sorted({p[k] for p in train_pairs for k in ("anchor", "positive")})
    mean = normalised(embed(model, training_texts)).mean(0)
    anchors, positives, q, c = (normalised(embed(model, texts)) - mean for texts in (
        [p["anchor"] for p in train_pairs], [p["positive"] for p in train_pairs], queries, answers))
    axes = np.linalg.svd(normalised(embed(model, training_texts)) - mean, full_matrices=False)[2]
    row = {}
    for m in SMALL:
        row[m] = {"prefix": scores(q[:, :m], c[:, :m], relevant)}
        for surrogate in ("float", "ste", "tanh"):
            weight = learn_projection(anchors, positives, axes[:m].T, surrogate, seed)
            row[m][surrogate] = scores(q @ weight, c @ weight, relevant)
    return row


def scores(q: np.ndarray, c: np.ndarray, relevant) -> dict:
    m = q.shape[1]
    return {"float32": hit10(q, c, relevant, m, "float32"), "binary": hit10(q, c, relevant, m, "binary"),
            "binary, random ties": hit10(q, c, relevant, m, "binary", ties="random")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rotation-lr", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    train_pairs, test_pairs = split_pairs(load_chatterbot_pairs(), seed=0)
    queries, answers, relevant = group_pairs(test_pairs)
    report = {}
    untrained = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING).eval()
    for seed in args.seeds:  # every projection is seeded; the float-only model is this seed's demo run
        float_only = train(train_pairs, seed, None, 0.0, "ste", -1, args.rotation_lr)[0]
        for name, model in (("untrained", untrained), ("float-only", float_only)):
            report.setdefault(name, []).append(measure(model, train_pairs, queries, answers, relevant, seed))
            print(f"seed {seed} {name}: {json.dumps(report[name][-1])}", flush=True)
    print(f"\nhit@10 %, mean of seeds {args.seeds}; Hamming with ties against the answer (random ties in brackets)")
    print("| encoder | dims | centred prefix: float32 / Hamming | float projection: float32 / Hamming | "
          "codes (ste): float32 / Hamming | codes (tanh): float32 / Hamming | closed (ste / tanh) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in report.items():
        for m in SMALL:
            def mean(kind, key):
                return float(np.mean([run[m][kind][key] for run in runs]))

            def cell(kind):
                return (f"{mean(kind, 'float32'):.1f} / {mean(kind, 'binary'):.1f} "
                        f"({mean(kind, 'binary, random ties'):.1f})")

            def closed(kind):  # mean over seeds of each seed's share
                return 100 * float(np.mean([(run[m][kind]["binary"] - run[m]["float"]["binary"])
                                            / (run[m]["float"]["float32"] - run[m]["float"]["binary"])
                                            for run in runs]))
            print(f"| {name} | {m} | {cell('prefix')} | {cell('float')} | {cell('ste')} | {cell('tanh')} | "
                  f"{closed('ste'):.0f}% / {closed('tanh'):.0f}% |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({k: [{str(m): v for m, v in run.items()} for run in runs] for k, runs in report.items()},
                      handle, indent=1)


if __name__ == "__main__":
    main()
