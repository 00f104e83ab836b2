"""Large contrastive batches at small-batch memory: mrl_hf's cached loss (``MRLTrainer(mini_batch_size=k)``) against
sentence-transformers' ``MatryoshkaLoss(CachedMultipleNegativesRankingLoss(mini_batch_size=k))``, and both uncached.

Same model (the packaged all-MiniLM-L6-v2, 384 dims, nesting 12..384), same chatterbot pairs, batch, max length 32,
AdamW, seed. Each configuration runs in its own process: training memory = peak RSS during ``train()`` minus the RSS
just before it (weights, data and tokenizer are loaded by then; the optimizer state, 2 x the weights, is counted in
every row alike). Step time = ``train()`` wall-clock / steps (the first step included).

    python benchmarks/bench_cached_loss.py                       # batch 128, mini-batch 16, 6 steps
    python benchmarks/bench_cached_loss.py --batch 256 --mini-batch 32 --steps 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _measure import machine, print_table  # noqa: E402

CONFIGS = ("st", "st_cached", "mrl_hf", "mrl_hf_cached")
NAMES = {"st": "sentence-transformers MatryoshkaLoss(MNRL)",
         "st_cached": "sentence-transformers MatryoshkaLoss(CachedMNRL)",
         "mrl_hf": "mrl_hf MRLTrainer", "mrl_hf_cached": "mrl_hf MRLTrainer(mini_batch_size)"}
MAX_LENGTH, LR = 32, 5e-5


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(config: str, batch: int, mini_batch: int, steps: int) -> dict:
    import torch

    from mrl_hf.data.text import load_chatterbot_pairs
    from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs

    torch.manual_seed(0)
    train, _ = split_pairs(load_chatterbot_pairs(), seed=0)
    train = train[:batch * steps]
    tmp = tempfile.mkdtemp()
    common = dict(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR, seed=0,
                  save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, logging_steps=steps)
    if config.startswith("st"):
        from datasets import Dataset
        from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)
        from sentence_transformers.sentence_transformer import losses

        model = SentenceTransformer(packaged_minilm(), device="cpu")
        model.max_seq_length = MAX_LENGTH
        inner = (losses.CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mini_batch)
                 if config == "st_cached" else losses.MultipleNegativesRankingLoss(model, scale=20.0))
        loss = losses.MatryoshkaLoss(model, inner, matryoshka_dims=NESTING[::-1])
        trainer = SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(**common),
                                             train_dataset=Dataset.from_list(train), loss=loss)
    else:
        from transformers import TrainingArguments

        from mrl_hf import MRLTrainer
        from mrl_hf.data.collator import PairCollator
        from mrl_hf.modeling import MRLBertModel

        model = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING)
        trainer = MRLTrainer(model=model, args=TrainingArguments(**common), train_dataset=train,
                             data_collator=PairCollator(model.tokenizer, max_length=MAX_LENGTH),
                             mini_batch_size=mini_batch if config == "mrl_hf_cached" else None)
    before = rss_mb()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    losses_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": seconds / steps, "train_mb": peak - before, "loss": losses_logged[-1] if losses_logged else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--run", choices=CONFIGS, help=argparse.SUPPRESS)  # one configuration, in this process
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run(args.run, args.batch, args.mini_batch, args.steps)))
        return
    results = {}
    for config in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--run", config, "--batch", str(args.batch), "--mini-batch",
                              str(args.mini_batch), "--steps", str(args.steps)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{config} failed:\n{out.stderr[-3000:]}")
        results[config] = json.loads(out.stdout.strip().splitlines()[-1])
        print(config, results[config], flush=True)
    print(f"\n# all-MiniLM-L6-v2, chatterbot pairs, batch {args.batch}, mini-batch {args.mini_batch}, max length "
          f"{MAX_LENGTH}, {args.steps} steps; {machine('cpu')}")
    st, st_cached = results["st"], results["st_cached"]
    rows = []
    for config in CONFIGS:
        r = results[config]
        peer = st_cached if config.endswith("cached") else st
        rows.append([NAMES[config], f"{r['step_s']:.2f}", f"{r['train_mb']:.0f}", f"{r['train_mb'] / st['train_mb']:.2f}x",
                     f"{r['step_s'] / peer['step_s']:.2f}x", f"{r['train_mb'] / peer['train_mb']:.2f}x"])
    print_table(["method", "s/step", "training MB", "MB vs ST uncached", "time vs ST peer", "MB vs ST peer"], rows)


if __name__ == "__main__":
    main()
