"""Quantisation-aware Matryoshka training vs the same recipe without it, on the demo's data (CPU, offline).

The demo recipe (mrl_hf.demo_text): all-MiniLM-L6-v2 (the packaged copy), chatterbot-corpus question -> answer pairs
split by question (80% train, 20% held out), nested InfoNCE at M={12,...,384}, 1 epoch of batch 32 (41 steps), lr 5e-5,
max_length 32, seed 0. Two runs with the same seed and data order:

  float-only   the demo's loss;
  QAT          the same, plus at every size the InfoNCE of the prefix as binary codes (and int8 with --qat int8,binary),
               weighted like the float term (quantization_weight, default 1).

Held-out retrieval (149 questions, 176 answers) at every size, for float32 prefixes (cosine), binary codes (Hamming
distance of the packed sign bits, no rescoring; ties by answer order) and int8 codes (ranges calibrated on the
answers), plus the codes' top-100 re-scored in float32 at the full size, and the binary codes of the answers
scored with the float query (``binary-asymmetric``: the stored codes are the same bits; the query is not
binarised). Step time: the median over the training steps of each run, and the forward+backward of one demo batch
of each loss timed round-robin in one process (robust to load from other jobs, see _measure.py).

With --post-hoc, the float-only model is also scored with two training-free maps fitted on the vectors of its own
training texts (no labels): ``mrl_hf.adaptor.mean_centering`` attached to the model, and that plus a rotation inside
each nesting block fitted by iterative quantisation (``block_itq_rotation``, benchmark only). QAT runs with
``--surrogate ste-centred`` (codes of batch-centred vectors) are also scored with ``mean_centering`` attached, as they
are meant to be served.

Usage: python benchmarks/bench_quantization_aware.py [--seeds 0 1 2] [--qat binary] [--quantization-weight 1.0]
       [--qat-sizes 12,24,48] [--surrogate ste] [--max-steps N] [--post-hoc] [--rotation-lr LR] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from _measure import time_interleaved  # noqa: E402

from mrl_hf.adaptor import attach_adaptor, mean_centering  # noqa: E402
from mrl_hf.data.collator import PairCollator  # noqa: E402
from mrl_hf.data.text import load_chatterbot_pairs  # noqa: E402
from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs  # noqa: E402
from mrl_hf.evaluation.pairs import group_pairs  # noqa: E402
from mrl_hf.modeling import MRLBertModel  # noqa: E402
from mrl_hf.quantization import format_precision_table, quantized_retrieval_metrics  # noqa: E402
from mrl_hf.rotation import add_output_rotation  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402

SMALL = [12, 24, 48]  # the "small prefixes" of the target
EVAL_PRECISIONS = ("float32", "binary", "int8")


class StepTimer(TrainerCallback):
    """Records the wall-clock of every optimiser step."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, *args, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def train(train_pairs, seed: int, precisions, weight: float, surrogate: str, max_steps: int, rotation_lr=None):
    torch.manual_seed(seed)
    model = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING, precisions=precisions,
                                         quantization_weight=weight, binary_surrogate=surrogate)
    if rotation_lr:
        add_output_rotation(model)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="mrl_qat_"), per_device_train_batch_size=32, num_train_epochs=1.0,
        max_steps=max_steps, learning_rate=5e-5, warmup_steps=0.1, seed=seed, logging_steps=10, save_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=True)
    timer = StepTimer()
    trainer = MRLTrainer(model=model, args=args, train_dataset=train_pairs, callbacks=[timer],
                         rotation_learning_rate=rotation_lr, data_collator=PairCollator(model.tokenizer, max_length=32))
    start = time.perf_counter()
    trainer.train()
    return model.eval(), {"train_s": time.perf_counter() - start, "steps": trainer.state.global_step,
                          "median_step_s": float(np.median(timer.times[1:] or timer.times))}


def embed(model, texts) -> np.ndarray:
    return model.encode(texts, batch_size=64, truncate_dim=model.config.matryoshka_embedding_dim, normalize=False)


def evaluate(model, test_pairs, transform=None) -> dict:
    """Held-out metrics per (size, precision); ``transform`` maps the raw vectors first (the post-hoc code maps)."""
    queries, answers, relevant = group_pairs(test_pairs)
    q, a = embed(model, queries), embed(model, answers)
    if transform is not None:
        q, a = transform(q), transform(a)
    return quantized_retrieval_metrics(q, a, NESTING, EVAL_PRECISIONS, relevant=relevant, rescore=True, rescore_k=100,
                                       asymmetric=True)


def block_itq_rotation(vectors: np.ndarray, iterations: int = 50) -> np.ndarray:
    """An orthogonal matrix that rotates each nesting block (features 0-11, 12-23, 24-47, ...) on its own, fitted by
    iterative quantisation (Gong & Lazebnik 2011: alternate codes = sign(V R) and the Procrustes R that maps V closest
    to them), from the block's PCA axes. A rotation inside whole blocks leaves every nested prefix's float cosines
    unchanged, so only the binary codes move. Benchmark only (not shipped: see docs/quantization.md)."""
    rotation = np.zeros((vectors.shape[1],) * 2)
    for lo, hi in zip([0, *NESTING[:-1]], NESTING):
        block = vectors[:, lo:hi] - vectors[:, lo:hi].mean(0)
        axes = np.linalg.svd(block, full_matrices=False)[2].T
        v, itq = block @ axes, np.eye(hi - lo)
        for _ in range(iterations):
            u, _, wt = np.linalg.svd(v.T @ np.sign(v @ itq))
            itq = u @ wt
        rotation[lo:hi, lo:hi] = axes @ itq
    return rotation


def step_cost(train_pairs, precisions, weight: float, surrogate: str, repeats: int) -> dict:
    """Forward + backward of one demo batch, float-only loss vs quantisation-aware loss, round-robin."""
    torch.manual_seed(0)
    model = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING).train()
    batch = PairCollator(model.tokenizer, max_length=32)(train_pairs[:32])
    qat = dict(precisions=precisions, quantization_weight=weight, binary_surrogate=surrogate)
    float_only = dict(precisions=None, quantization_weight=1.0, binary_surrogate="ste")

    def step(settings):
        def run():
            for key, value in settings.items():
                setattr(model.config, key, value)
            model.config.validate_matryoshka()
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
        return run

    times = time_interleaved({"float-only": step(float_only), "QAT": step(qat)}, repeats=repeats, warmup=2)
    return {**times, "ratio": times["QAT"] / times["float-only"]}


def gap_report(base: dict, qat: dict, label: str = "QAT", code: str = "binary") -> list[str]:
    """How much of the float-only model's post-hoc gap (float vs symmetric binary codes) ``qat``'s ``code`` closes."""
    lines = []
    for metric in ("hit@10", "mrr"):
        for m in NESTING:
            f, b, q = (100 * base["float32"][m][metric], 100 * base["binary"][m][metric],
                       100 * qat[code][m][metric])
            gap = f - b
            closed = (q - b) / gap if gap > 0 else float("nan")
            df = 100 * (qat["float32"][m][metric] - base["float32"][m][metric])
            lines.append(f"  {metric:>9} @ {m:>3}: float {f:5.1f}, post-hoc binary {b:5.1f}, {label} binary {q:5.1f} "
                         f"-> {100 * closed:5.0f}% of the gap closed; float change {df:+.1f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--qat", default="binary", help="comma-separated precisions of the QAT run, e.g. binary,int8")
    parser.add_argument("--qat-sizes", default=None, help="comma-separated sizes that get the --qat terms (default: "
                        "every size), e.g. 12,24,48")
    parser.add_argument("--quantization-weight", type=float, nargs="+", default=[1.0])
    parser.add_argument("--surrogate", nargs="+", default=["ste"], choices=["ste", "tanh", "ste-centred"],
                        help="several: one QAT run per surrogate (and per weight), against one float-only run")
    parser.add_argument("--max-steps", type=int, default=-1, help="-1: one epoch (41 steps)")
    parser.add_argument("--post-hoc", action="store_true", help="also score the float-only model with training-free "
                        "maps fitted on its training texts: mean_centering attached, and a block-wise ITQ rotation")
    parser.add_argument("--rotation-lr", type=float, default=None, help="every run (float-only and QAT) also trains "
                        "an output rotation at this rate (mrl_hf.add_output_rotation, MRLTrainer's "
                        "rotation_learning_rate): a fast lever on which directions each prefix's bits read")
    parser.add_argument("--cost-repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write every number here")
    args = parser.parse_args()
    precisions = ["float32", *args.qat.split(",")]
    if args.qat_sizes:
        sizes = [int(m) for m in args.qat_sizes.split(",")]
        precisions = {"float32": NESTING, **{p: sizes for p in args.qat.split(",")}}
    train_pairs, test_pairs = split_pairs(load_chatterbot_pairs(), seed=0)
    texts = sorted({p[k] for p in train_pairs for k in ("anchor", "positive")})  # for the post-hoc maps
    print(f"chatterbot-corpus: {len(train_pairs)} training pairs, {len(test_pairs)} held-out pairs; "
          f"nesting_list={NESTING}; QAT precisions={precisions}, quantization_weight={args.quantization_weight}, "
          f"surrogate={args.surrogate}; torch threads={torch.get_num_threads()}", flush=True)
    report = {"settings": vars(args), "runs": {}}
    variants = [(w, sur) for w in args.quantization_weight for sur in args.surrogate]
    for seed in args.seeds:
        runs = {}
        for name, prec, weight, surrogate in [("float-only", None, 1.0, "ste"),
                                              *[(f"QAT {sur} w={w:g}", precisions, w, sur) for w, sur in variants]]:
            model, timing = train(train_pairs, seed, prec, weight, surrogate, args.max_steps, args.rotation_lr)
            runs[name] = {"timing": timing, "metrics": evaluate(model, test_pairs)}
            print(f"seed {seed} {name}: {timing['steps']} steps in {timing['train_s']:.0f} s "
                  f"(median step {timing['median_step_s']:.2f} s)", flush=True)
            if surrogate == "ste-centred" or (args.post_hoc and prec is None):  # centring fitted on the
                # training texts' vectors (no labels); a ste-centred run is served with the centring it trained for
                centred = attach_adaptor(copy.deepcopy(model), mean_centering(embed(model, texts), NESTING))
                runs[f"{name} + mean_centering"] = {"metrics": evaluate(centred, test_pairs)}
            if args.post_hoc and prec is None:
                rotation = block_itq_rotation(embed(centred, texts))
                runs["float-only + mean_centering + block ITQ"] = {
                    "metrics": evaluate(centred, test_pairs, lambda x: x @ rotation)}
            del model
        report["runs"][seed] = runs
        for name, run in runs.items():
            print(f"\n### seed {seed}, {name} (held-out hit@10 / MRR, %)\n")
            print(format_precision_table(run["metrics"]))
        for name, run in runs.items():
            if name == "float-only":
                continue
            print(f"\nseed {seed}: binary codes, no rescoring ({name} vs float-only):")
            print("\n".join(gap_report(runs["float-only"]["metrics"], run["metrics"],
                                        "QAT" if "timing" in run else "mapped")))
            print(f"seed {seed}: binary codes scored with the float query (asymmetric), same gap:")
            print("\n".join(gap_report(runs["float-only"]["metrics"], run["metrics"], "asymmetric",
                                        "binary-asymmetric")))
            if "timing" not in run:
                continue
            ratio = run["timing"]["median_step_s"] / runs["float-only"]["timing"]["median_step_s"]
            print(f"seed {seed}: median training step {name} / float-only = {ratio:.3f}")
    weight, surrogate = variants[0]
    cost = step_cost(train_pairs, precisions, weight, surrogate, args.cost_repeats)
    report["step_cost"] = cost
    print(f"\nforward+backward of one demo batch (median of {args.cost_repeats}, round-robin): float-only "
          f"{cost['float-only']:.3f} s, QAT ({surrogate}, w={weight:g}) {cost['QAT']:.3f} s, ratio {cost['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
