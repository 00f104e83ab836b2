"""Real weights through the generic path: the packaged all-MiniLM-L6-v2 fine-tuned by the demo's recipe as an
``MRLBertModel`` (the family class) and as an ``MRLModelForTextEmbedding`` (the class for any backbone), same data,
hyper-parameters and seed; held-out chatterbot question -> answer hit@1 / hit@10 at every size for both.

    python benchmarks/bench_generic_real.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import torch
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from _measure import machine, print_table  # noqa: E402

from mrl_hf import MRLTrainer  # noqa: E402
from mrl_hf.data.collator import PairCollator  # noqa: E402
from mrl_hf.data.text import load_chatterbot_pairs  # noqa: E402
from mrl_hf.modeling import MRLBertModel, MRLModelForTextEmbedding  # noqa: E402
from mrl_hf.recipes import NESTING, evaluate, packaged_minilm, split_pairs  # noqa: E402


def finetune(cls, path, train, seed=0):
    torch.manual_seed(seed)
    model = cls.from_pretrained(path, nesting_list=NESTING)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=32, learning_rate=5e-5,
                                 warmup_steps=0.1, seed=seed, logging_steps=100, save_strategy="no", report_to=[],
                                 disable_tqdm=True, use_cpu=True)
        trainer = MRLTrainer(model=model, args=args, train_dataset=train,
                             data_collator=PairCollator(model.tokenizer, max_length=32))
        start = time.perf_counter()
        trainer.train()
    return model.eval(), time.perf_counter() - start


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    path = packaged_minilm()
    train, test = split_pairs(load_chatterbot_pairs(), seed=0)
    rows = []
    for cls in (MRLBertModel, MRLModelForTextEmbedding):
        model, seconds = finetune(cls, path, train)
        scores = evaluate(model, test, NESTING)
        rows.append([cls.__name__, f"{seconds:.1f}",
                     *[f"{100 * scores[m]['hit@1']:.1f} / {100 * scores[m]['hit@10']:.1f}" for m in NESTING]])
    print(f"# all-MiniLM-L6-v2, {len(train)} chatterbot pairs, 1 epoch, batch 32, lr 5e-5, seed 0; held-out hit@1 / "
          f"hit@10 (%) per size; {machine('cpu')}")
    print_table(["class", "train s", *[str(m) for m in NESTING]], rows)


if __name__ == "__main__":
    main()
