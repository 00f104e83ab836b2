"""Quantisation-aware Matryoshka training vs the same recipe without it, on the demo's data (CPU, offline).

The demo recipe (mrl_hf.demo_text): all-MiniLM-L6-v2 (the packaged copy), chatterbot-corpus question -> answer pairs
split by question (80% train, 20% held out), nested InfoNCE at M={12,...,384}, 1 epoch of batch 32 (41 steps), lr 5e-5,
max_length 32, seed 0. Two runs with the same seed and data order:

  float-only   the demo's loss;
  QAT          the same, plus at every size the InfoNCE of the prefix as binary codes (and int8 with --qat int8,binary),
               weighted like the float term (quantization_weight, default 1).

Held-out retrieval at every size on two sets: in domain, the demo's held-out 149 questions over 176 answers; out of
domain, rotten-tomatoes review -> plot of the same movie (2,000 reviews over 1,083 plots, text no run trains on;
read at 256 tokens). Precisions: float32 prefixes (cosine), binary codes (Hamming distance of the packed sign bits,
no rescoring; an answer tied with the relevant one ranks above it, and, as "binary, random ties", the expectation
when the tied answers come in random order) and int8 codes (ranges calibrated on the
answers), plus the codes' top-100 re-scored in float32 at the full size, and the binary codes of the answers scored
with the float query (``binary-asymmetric``: the stored codes are the same bits; the query is not binarised). Step
time: the median over
the training steps of each run, and the forward+backward of one demo batch of each loss timed round-robin in one
process (robust to load from other jobs, see _measure.py).

Training-free maps, fitted without labels on each set's own texts (in domain: the training texts; out of domain: the
plots, the corpus a deployment indexes) and applied to the vectors (what the adaptor computes once attached):
``mrl_hf.adaptor.mean_centering``. QAT runs with ``--surrogate ste-centred``, which train the codes of batch-centred
vectors, are scored with it, as they are meant to be served; with --post-hoc so are the float-only model and the
packaged model before any training ("original"). With --post-hoc every centred run is also scored centred + a
rotation inside each nesting block fitted by iterative quantisation (``block_itq_rotation``, benchmark only), and
centred + a random rotation inside each block (mean of 4 draws): a rotation inside whole blocks changes no float
cosine at the nested sizes, only which directions the sign bits read. With --itq-start (and --rotation-lr), QAT runs
start their output rotation from the block ITQ rotation of the untrained model's centred training-text vectors (the
codes ``ste-centred`` trains).

Usage: python benchmarks/bench_quantization_aware.py [--seeds 0 1 2] [--qat binary] [--quantization-weight 1.0]
       [--qat-sizes 12,24,48] [--surrogate ste] [--max-steps N] [--post-hoc] [--rotation-lr LR] [--itq-start]
       [--json out.json]
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
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from _measure import time_interleaved  # noqa: E402

from mrl_hf.data.collator import PairCollator  # noqa: E402
from mrl_hf.data.text import load_chatterbot_pairs, load_review_to_plot  # noqa: E402
from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs  # noqa: E402
from mrl_hf.evaluation.pairs import group_pairs  # noqa: E402
from mrl_hf.modeling import MRLBertModel  # noqa: E402
from mrl_hf.quantization import format_precision_table, quantized_retrieval_metrics  # noqa: E402
from mrl_hf.rotation import add_output_rotation  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402

SMALL = [12, 24, 48]  # the "small prefixes" of the target
IN_DOMAIN, OUT_OF_DOMAIN = "chatterbot q->a", "review->plot"
EVAL_PRECISIONS = ("float32", "binary", "int8")
RANDOM_ROTATIONS = 4  # draws of the random block rotation (--post-hoc)
RANDOM_TIES = "binary, random ties"  # Hamming hit@10 expected when ties come in random order
EVAL_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length: whole plots out of domain


class StepTimer(TrainerCallback):
    """Records the wall-clock of every optimiser step."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, *args, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def train(train_pairs, seed: int, precisions, weight: float, surrogate: str, max_steps: int, rotation_lr=None,
          itq_texts=None):
    torch.manual_seed(seed)
    model = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING, precisions=precisions,
                                         quantization_weight=weight, binary_surrogate=surrogate)
    if rotation_lr:
        rotation = add_output_rotation(model)
        if itq_texts is not None:  # start from the block ITQ rotation of the centred start vectors
            x = embed(model, itq_texts)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            with torch.no_grad():
                rotation.weight.copy_(torch.from_numpy(block_itq_rotation(x - x.mean(0)).T))
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
    return model.encode(texts, batch_size=64, truncate_dim=model.config.matryoshka_embedding_dim, normalize=False,
                        max_length=EVAL_LENGTH)


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """What ``mean_centering`` attached to the model outputs: the L2-normalised vectors minus ``mean``."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True) - mean


def evaluate(vectors: tuple[np.ndarray, np.ndarray], relevant, transform=None) -> dict:
    """Held-out metrics per (size, precision) of ``(queries, candidates)`` vectors; ``transform`` maps them first."""
    q, a = vectors
    if transform is not None:
        q, a = transform(q), transform(a)
    out = quantized_retrieval_metrics(q, a, NESTING, EVAL_PRECISIONS, relevant=relevant, rescore=True, rescore_k=100,
                                      asymmetric=True)
    out[RANDOM_TIES] = quantized_retrieval_metrics(q, a, NESTING, ("binary",), relevant=relevant,
                                                   ties="random")["binary"]
    return out


def score_variants(model, name: str, sets: dict, fit_texts: dict, centring: bool, post_hoc: bool) -> dict:
    """``{run name: {set: metrics}}`` for ``model`` as trained, and served with the training-free maps: centred
    (``mean_centering``), centred + block ITQ, and centred + a random rotation inside each nesting block (the mean
    over RANDOM_ROTATIONS draws), each fitted per set on that set's ``fit_texts`` (no labels)."""
    out = {name: {}}
    for set_name, (queries, corpus, relevant) in sets.items():
        vectors = embed(model, queries), embed(model, corpus)
        out[name][set_name] = evaluate(vectors, relevant)
        if not centring:
            continue
        fit = vectors[1] if fit_texts[set_name] is corpus else embed(model, fit_texts[set_name])
        mean = fit.astype(np.float64) / np.linalg.norm(fit, axis=1, keepdims=True)
        mean = mean.mean(0)
        out.setdefault(f"{name} + mean_centering", {})[set_name] = evaluate(vectors, relevant,
                                                                            lambda x: centred(x, mean))
        if post_hoc:
            rotation = block_itq_rotation(centred(fit, mean))
            out.setdefault(f"{name} + mean_centering + block ITQ", {})[set_name] = evaluate(
                vectors, relevant, lambda x: centred(x, mean) @ rotation)
            draws = [evaluate(vectors, relevant, lambda x: centred(x, mean) @ random_block_rotation(seed))
                     for seed in range(RANDOM_ROTATIONS)]
            out.setdefault(f"{name} + mean_centering + random block rotation", {})[set_name] = mean_metrics(draws)
    return out


def random_block_rotation(seed: int) -> np.ndarray:
    """A uniformly random orthogonal matrix inside each nesting block (QR of a Gaussian, signs fixed)."""
    rng, rotation = np.random.default_rng(seed), np.zeros((NESTING[-1],) * 2)
    for lo, hi in zip([0, *NESTING[:-1]], NESTING):
        q, r = np.linalg.qr(rng.standard_normal((hi - lo, hi - lo)))
        rotation[lo:hi, lo:hi] = q * np.sign(np.diag(r))
    return rotation


def mean_metrics(draws: list[dict]) -> dict:
    return {label: {m: {key: float(np.mean([d[label][m][key] for d in draws])) for key in draws[0][label][m]}
                    for m in draws[0][label]} for label in draws[0]}


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


def gap_shares(runs: dict, name: str, set_name: str, base: str = "float-only",
               code: str = "binary") -> tuple[list[float], list[float]]:
    """At each small size, the mean over seeds of the share of the ``base`` model's Hamming gap that ``name``'s
    binary codes close, and the share computed from the seed means (steadier where a seed's gap is small); ``code``
    names the Hamming scoring (ties against the answer, or RANDOM_TIES) for both models."""
    def hits(run, precision):
        return np.array([[100 * r[run]["metrics"][set_name][precision][m]["hit@10"] for m in SMALL]
                         for r in runs.values()])
    f, b, q = hits(base, "float32"), hits(base, code), hits(name, code)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = np.where(f - b > 0, (q - b) / (f - b), np.nan)
        of_means = (q.mean(0) - b.mean(0)) / (f.mean(0) - b.mean(0))
    return list(np.nanmean(per_seed, 0)), list(of_means)


def summary(runs: dict, set_names: list[str]) -> str:
    """Mean over seeds of hit@10 per run, set and (size, precision), and the share of the float-only model's
    Hamming gap closed at the small sizes (mean of the per-seed shares)."""
    lines = []
    for set_name in set_names:
        lines.append(f"\n## {set_name}: hit@10 %, mean of {len(runs)} seed(s); share of the float-only model's "
                     f"(the original's, for its rows) Hamming gap closed at {SMALL}: mean of the seeds' shares "
                     "(share of the seed means)")
        lines.append("| run: precision | " + " | ".join(str(m) for m in NESTING) + " | closed |")
        lines.append("|---|" + "---|" * (len(NESTING) + 1))
        for name in next(iter(runs.values())):
            for precision in ("float32", "binary", RANDOM_TIES):
                values = [[100 * r[name]["metrics"][set_name][precision][m]["hit@10"] for m in NESTING]
                          for r in runs.values()]
                closed = ""
                base = "original" if name.startswith("original") else "float-only"
                if precision != "float32" and name != base:
                    closed = " / ".join(f"{100 * a:.0f}% ({100 * b:.0f}%)"
                                        for a, b in zip(*gap_shares(runs, name, set_name, base, precision)))
                lines.append(f"| {name}: {precision} | " + " | ".join(f"{v:.1f}" for v in np.mean(values, 0))
                             + f" | {closed} |")
    return "\n".join(lines)


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
    parser.add_argument("--itq-start", action="store_true", help="QAT runs start their output rotation (needs "
                        "--rotation-lr) from the block ITQ rotation of the start model's centred training-text vectors "
                        "(centred: meant for --surrogate ste-centred)")
    parser.add_argument("--cost-repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write every number here")
    args = parser.parse_args()
    if args.itq_start and not args.rotation_lr:
        parser.error("--itq-start sets the start of the output rotation: give --rotation-lr too")
    precisions = ["float32", *args.qat.split(",")]
    if args.qat_sizes:
        sizes = [int(m) for m in args.qat_sizes.split(",")]
        precisions = {"float32": NESTING, **{p: sizes for p in args.qat.split(",")}}
    train_pairs, test_pairs = split_pairs(load_chatterbot_pairs(), seed=0)
    texts = sorted({p[k] for p in train_pairs for k in ("anchor", "positive")})  # for the post-hoc maps
    reviews, plots, plot_of = load_review_to_plot()
    sets = {IN_DOMAIN: group_pairs(test_pairs), OUT_OF_DOMAIN: (reviews, plots, plot_of)}
    fit_texts = {IN_DOMAIN: texts, OUT_OF_DOMAIN: plots}  # no labels: the training texts, the corpus served
    print(f"chatterbot-corpus: {len(train_pairs)} training pairs, {len(test_pairs)} held-out pairs; out of domain: "
          f"{len(reviews)} reviews over {len(plots)} plots; nesting_list={NESTING}; QAT precisions={precisions}, "
          f"quantization_weight={args.quantization_weight}, surrogate={args.surrogate}; "
          f"torch threads={torch.get_num_threads()}", flush=True)
    report = {"settings": vars(args), "runs": {}}
    variants = [(w, sur) for w in args.quantization_weight for sur in args.surrogate]
    start = None
    if args.post_hoc:  # the packaged model before any training, as a reference for the code maps (no seed)
        original = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING).eval()
        start = score_variants(original, "original", sets, fit_texts, centring=True, post_hoc=True)
        del original
    for seed in args.seeds:
        runs, timings = dict(start or {}), {}
        for name, prec, weight, surrogate in [("float-only", None, 1.0, "ste"),
                                              *[(f"QAT {sur} w={w:g}", precisions, w, sur) for w, sur in variants]]:
            model, timings[name] = train(train_pairs, seed, prec, weight, surrogate, args.max_steps,
                                         args.rotation_lr, texts if args.itq_start and prec is not None else None)
            print(f"seed {seed} {name}: {timings[name]['steps']} steps in {timings[name]['train_s']:.0f} s "
                  f"(median step {timings[name]['median_step_s']:.2f} s)", flush=True)
            # a ste-centred run is served with the centring it trained for
            runs.update(score_variants(model, name, sets, fit_texts, centring=surrogate == "ste-centred" or (
                args.post_hoc and prec is None), post_hoc=args.post_hoc))
            del model
        report["runs"][seed] = {name: {"metrics": metrics, **({"timing": timings[name]} if name in timings else {})}
                                for name, metrics in runs.items()}
        for set_name in sets:
            for name, metrics in runs.items():
                print(f"\n### seed {seed}, {name}, {set_name} (held-out hit@10 / MRR, %)\n")
                print(format_precision_table(metrics[set_name]))
            base = runs["float-only"][set_name]
            for name, metrics in runs.items():
                if name == "float-only" or name.startswith("original"):
                    continue
                print(f"\nseed {seed}, {set_name}: binary codes, no rescoring ({name} vs float-only):")
                print("\n".join(gap_report(base, metrics[set_name], "QAT" if name in timings else "mapped")))
                print(f"seed {seed}, {set_name}: binary codes scored with the float query (asymmetric), same gap:")
                print("\n".join(gap_report(base, metrics[set_name], "asymmetric", "binary-asymmetric")))
        for name in timings:
            if name != "float-only":
                ratio = timings[name]["median_step_s"] / timings["float-only"]["median_step_s"]
                print(f"seed {seed}: median training step {name} / float-only = {ratio:.3f}")
    print(summary(report["runs"], list(sets)))
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
