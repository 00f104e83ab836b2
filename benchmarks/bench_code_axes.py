"""Which directions should a prefix's sign bits read? Binary codes of the packaged all-MiniLM-L6-v2, untrained, under
training-free maps that leave every nested size's float cosines as they are (CPU, offline, about 3 minutes).

Sets (as bench_quantization_aware.py): in domain, the demo's held-out chatterbot questions (149) over their answers
(176), maps fitted on the 1,298 training texts; out of domain, rotten-tomatoes review -> plot (2,000 reviews over
1,083 plots, read at 256 tokens), maps fitted on the plots. No labels are used to fit anything.

Maps, each scored in float32, as int8 codes (ranges calibrated on the corpus) and as binary codes (Hamming search),
at every nested prefix, no rescoring (a tie with the relevant answer counts against it; random rotations: binary
only):
  raw                  the encoder's own coordinates;
  centred              ``mrl_hf.adaptor.mean_centering``;
  centred + random     and a random rotation inside each nesting block (features 0-11, 12-23, 24-47, ...), mean of 4;
  centred + block ITQ  and the rotation inside each block fitted by iterative quantisation (Gong & Lazebnik 2011);
  PCA                  ``mrl_hf.pca_rotation`` (the matryoshkafy start: principal axes, largest variance first);
  PCA + block ITQ      and the block ITQ rotation of the PCA outputs;
  adaptor              ``MatryoshkaAdaptor(384).fit`` (what ``mrl-hf matryoshkafy`` fits: PCA start, MLP), seed 0;
  adaptor + block ITQ  and the block ITQ rotation of the adaptor's outputs.
A rotation inside whole blocks changes no float cosine at the nested sizes, so those rows differ only in their bits.

    python benchmarks/bench_code_axes.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_quantization_aware import (  # noqa: E402
    EVAL_LENGTH, IN_DOMAIN, OUT_OF_DOMAIN, RANDOM_ROTATIONS, block_itq_rotation, random_block_rotation)

from mrl_hf.adaptor import MatryoshkaAdaptor, mean_centering, pca_rotation  # noqa: E402
from mrl_hf.data.text import load_chatterbot_pairs, load_review_to_plot  # noqa: E402
from mrl_hf.evaluation.pairs import group_pairs  # noqa: E402
from mrl_hf.modeling import MRLBertModel  # noqa: E402
from mrl_hf.quantization import quantized_retrieval_metrics  # noqa: E402
from mrl_hf.recipes import NESTING, packaged_minilm, split_pairs  # noqa: E402


PRECISIONS = ("float32", "int8", "binary")


def hit10(queries, corpus, relevant, precision: str) -> list[float]:
    metrics = quantized_retrieval_metrics(queries, corpus, NESTING, (precision,), relevant=relevant)
    return [100 * metrics[precision][m]["hit@10"] for m in NESTING]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args()
    model = MRLBertModel.from_pretrained(packaged_minilm(), nesting_list=NESTING).eval()

    def embed(texts):
        return model.encode(texts, batch_size=64, truncate_dim=NESTING[-1], normalize=False, max_length=EVAL_LENGTH)

    train_pairs, test_pairs = split_pairs(load_chatterbot_pairs(), seed=0)
    training_texts = sorted({p[k] for p in train_pairs for k in ("anchor", "positive")})
    reviews, plots, plot_of = load_review_to_plot()
    queries, answers, relevant = group_pairs(test_pairs)
    sets = {IN_DOMAIN: (embed(queries), embed(answers), relevant, embed(training_texts))}
    plot_vectors = embed(plots)
    sets[OUT_OF_DOMAIN] = (embed(reviews), plot_vectors, plot_of, plot_vectors)
    report = {}
    for set_name, (q, c, rel, fit) in sets.items():
        centring, pca = mean_centering(fit, NESTING), pca_rotation(fit, NESTING)
        torch.manual_seed(0)
        adaptor = MatryoshkaAdaptor(fit.shape[1], NESTING).fit(fit)

        def mapped(adaptor, rotation=None):
            def apply(x):
                z = adaptor.transform(x, dim=NESTING[-1], normalize=False)
                return z if rotation is None else z @ rotation
            return apply

        itq = block_itq_rotation(centring.transform(fit, dim=NESTING[-1], normalize=False))
        pca_itq = block_itq_rotation(pca.transform(fit, dim=NESTING[-1], normalize=False))
        adaptor_itq = block_itq_rotation(adaptor.transform(fit, dim=NESTING[-1], normalize=False))
        maps = {"raw": lambda x: x, "centred": mapped(centring), "centred + block ITQ": mapped(centring, itq),
                "PCA": mapped(pca), "PCA + block ITQ": mapped(pca, pca_itq), "adaptor": mapped(adaptor),
                "adaptor + block ITQ": mapped(adaptor, adaptor_itq)}
        rows = {}
        for name, apply in maps.items():
            rows[name] = {p: hit10(apply(q), apply(c), rel, p) for p in PRECISIONS}
        draws = [mapped(centring, random_block_rotation(seed)) for seed in range(RANDOM_ROTATIONS)]
        rows["centred + random block rotation"] = {
            "float32": rows["centred"]["float32"],
            "binary": list(np.mean([hit10(d(q), d(c), rel, "binary") for d in draws], 0))}
        report[set_name] = rows
        print(f"\n## {set_name}: hit@10 % of the untrained model (binary: Hamming, no rescoring)\n")
        print("| map: precision | " + " | ".join(str(m) for m in NESTING) + " |")
        print("|---|" + "---|" * len(NESTING))
        for name in ("raw", "centred", "centred + random block rotation", "centred + block ITQ", "PCA",
                     "PCA + block ITQ", "adaptor", "adaptor + block ITQ"):
            for precision in PRECISIONS:
                if precision in rows[name]:  # random rotations: no int8 row
                    print(f"| {name}: {precision} | " + " | ".join(f"{v:.1f}" for v in rows[name][precision]) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
