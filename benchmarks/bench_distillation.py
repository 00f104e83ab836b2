"""Cost of Matryoshka self-distillation steps and of serving through an adaptor (CPU).

Training step, batch 64 texts of ~32 tokens, a 6-layer 384-wide BERT student (all-MiniLM-L6-v2's shape, random
weights), M={16,...,384}:
  (a) plain nested contrastive step on (anchor, positive) pairs: two student forwards, the usual MRL fine-tuning;
  (b) self-distillation with precomputed teacher vectors (add_teacher_embeddings): one student forward;
  (c) self-distillation running the frozen teacher every step: one student forward + one teacher forward.
Serving, 20,000 vectors of 384 dims cut to 64: (d) slicing, (e) PCA rotation, (f) MatryoshkaAdaptor (residual MLP).
Time: median of 5 runs, cases round-robin in this process (see _measure.py). Usage: python benchmarks/bench_distillation.py
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import print_table, time_interleaved  # noqa: E402

from mrl_hf.adaptor import MatryoshkaAdaptor, pca_rotation  # noqa: E402
from mrl_hf.distillation import MatryoshkaDistillationLoss  # noqa: E402
from mrl_hf.embeddings import truncate_embeddings  # noqa: E402
from mrl_hf.losses import nested_contrastive_loss  # noqa: E402
from mrl_hf.modeling.bert import MRLBertConfig, MRLBertModel  # noqa: E402

BATCH, TOKENS, NESTING = 64, 32, [16, 32, 64, 128, 256, 384]


def _model(seed):
    torch.manual_seed(seed)
    config = MRLBertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                           nesting_list=NESTING)
    return MRLBertModel(config)


def training_steps():
    student, teacher = _model(0), _model(1).eval()
    ids = torch.randint(1000, 30000, (BATCH, TOKENS))
    pos = torch.randint(1000, 30000, (BATCH, TOKENS))
    loss = MatryoshkaDistillationLoss(NESTING)
    with torch.no_grad():
        precomputed = teacher(ids).embeddings

    def contrastive():
        student.zero_grad(set_to_none=True)
        nested_contrastive_loss(student(ids).embeddings, student(pos).embeddings, NESTING).loss.backward()

    def distil_precomputed():
        student.zero_grad(set_to_none=True)
        loss(student(ids).embeddings, precomputed).loss.backward()

    def distil_online():
        student.zero_grad(set_to_none=True)
        with torch.no_grad():
            target = teacher(ids).embeddings
        loss(student(ids).embeddings, target).loss.backward()

    return {"(a) nested contrastive step": contrastive, "(b) distil, precomputed teacher": distil_precomputed,
            "(c) distil, teacher every step": distil_online}


def serving():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 384)).astype(np.float32)
    pca, adaptor = pca_rotation(x[:5000]), MatryoshkaAdaptor(384)
    adaptor.init_pca(x[:5000])
    return {"(d) slice to 64": lambda: truncate_embeddings(x, 64, normalize=True),
            "(e) PCA rotation to 64": lambda: pca.transform(x, 64),
            "(f) adaptor to 64": lambda: adaptor.transform(x, 64)}


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    for title, cases, base in (("training step", training_steps(), "(a) nested contrastive step"),
                               ("serving 20k vectors", serving(), "(d) slice to 64")):
        seconds = time_interleaved(cases)
        print(f"\n{title}")
        print_table(["case", "ms", f"time / {base.split()[0]}"],
                    [[name, 1000 * t, t / seconds[base]] for name, t in seconds.items()])


if __name__ == "__main__":
    main()
