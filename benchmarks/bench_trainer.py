"""What MRLTrainer adds per training step over the stock transformers Trainer, on the same model and data (CPU).

Both train MRLBertForMaskedLM (MiniLM size: 6 layers, hidden 384, M={12,...,384}) on the same batches with the same
arguments (logging every 10 steps); the stock Trainer trains the same nested loss but keeps no per-dim logs, no
non-finite check and no strict checkpoint loading. Time per optimizer step from a callback, median over the steps
after the first 5 of each run; the two trainers alternate over several runs so that background load falls on both.
Target: MRLTrainer <= 1.02x the stock Trainer's step time.

    python benchmarks/bench_trainer.py [--runs 3] [--steps 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from _measure import machine, print_table  # noqa: E402

from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402

BATCH, SEQ, WARMUP = 16, 64, 5


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def data(n: int):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(1000, 30000, (SEQ,), generator=g)
        labels = ids.clone()
        labels[torch.rand(SEQ, generator=g) > 0.15] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return rows


def run(trainer_class, steps: int, out_dir: str) -> list[float]:
    torch.manual_seed(0)
    model = MRLBertForMaskedLM(MRLBertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                             intermediate_size=1536))
    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=BATCH, max_steps=steps, logging_steps=10,
                             report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no", seed=0,
                             remove_unused_columns=False)
    timer = StepTimes()
    trainer_class(model=model, args=args, train_dataset=data(BATCH * steps), callbacks=[timer]).train()
    return timer.times[WARMUP:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    times = {"(a) transformers Trainer": [], "(b) MRLTrainer": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.runs):
            times["(a) transformers Trainer"] += run(Trainer, args.steps, out)
            times["(b) MRLTrainer"] += run(MRLTrainer, args.steps, out)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["(a) transformers Trainer"]
    print(f"# MRLBertForMaskedLM (MiniLM size), batch {BATCH} x seq {SEQ}, {args.runs} runs x "
          f"{args.steps - WARMUP} timed steps each; {machine('cpu')}")
    print_table(["trainer", "step ms (median)", "vs (a)"], [[n, median[n] * 1000, median[n] / base] for n in times])


if __name__ == "__main__":
    main()
