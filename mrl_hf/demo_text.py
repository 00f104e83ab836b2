"""The real demo (`mrl-hf demo`): MRL fine-tuning of all-MiniLM-L6-v2 on real question -> answer pairs, offline.

1. Split chatterbot-corpus (question, answer) pairs by question: 80% to train, 20% held out.
2. Score held-out question -> answer retrieval at every size for the original model, sliced.
3. Fine-tune with the nested InfoNCE loss (``MRLTrainer`` + ``PairCollator``) and score the MRL model.
4. Save the checkpoint with its model card and accuracy-vs-dim plot (``mrl_hf.hub.save_for_hub``).
5. Reload it (default size 48, its saved ``truncate_dim``) and run adaptive retrieval (shortlist at a small size,
   re-rank at full size).

Needs the ``demo`` extra (the packaged MiniLM weights and the chatterbot corpus); nothing is downloaded.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from .evaluation.pairs import group_pairs
from .recipes import (
    BASE_MODEL_HUB_ID,
    checkpoint_nesting_list,
    evaluate,
    finetune,
    packaged_minilm,
    results_table,
    split_pairs,
)

DEFAULT_DIM = 48  # the size the saved checkpoint gives by default (its truncate_dim), where the model has it
RESULTS_METHODS = ("MRL fine-tuned (this model)", "original all-MiniLM-L6-v2, sliced")


def format_comparison(table, metric: str = "hit@1") -> str:
    """A plain-text table a person can read: one row per size, the MRL model against the original sliced."""
    mrl, base = table.methods[:2]
    header = f"{'dim':>5}  {metric + ' MRL':>14}  {metric + ' original':>19}  {'MRR MRL':>8}  {'MRR original':>12}"
    lines = [header, "-" * len(header)]
    for dim in table.dims:
        lines.append(f"{dim:>5}  {table.get(mrl, metric, dim):>14.1f}  {table.get(base, metric, dim):>19.1f}  "
                     f"{table.get(mrl, 'MRR', dim):>8.1f}  {table.get(base, 'MRR', dim):>12.1f}")
    return "\n".join(lines)


def adaptive_retrieval(model_dir: str, test_pairs, shortlist_dim: int, shortlist_k: int = 50):
    """Reload the saved model (its saved ``truncate_dim`` is the default size); search held-out answers with adaptive
    retrieval.

    Returns a dict with the reloaded embedding shape, hit@1 of adaptive and of full-size exact search,
    and MFLOPs per query of both."""
    from .modeling import MRLBertModel
    from .retrieval import MatryoshkaIndex

    model = MRLBertModel.from_pretrained(model_dir)
    queries, answers, relevant = group_pairs(test_pairs)
    small = model.encode_query(queries[:4])  # config.truncate_dim applies: (4, truncate_dim)
    full = model.config.matryoshka_embedding_dim
    index = MatryoshkaIndex(model.encode_document(answers, truncate_dim=full), metric="cosine", backend="torch")
    q = model.encode_query(queries, truncate_dim=full)
    adaptive = index.adaptive_search(q, top_k=10, shortlist_dim=shortlist_dim, shortlist_k=shortlist_k)
    exact = index.search(q, top_k=10)

    def recall1(ids):
        return 100.0 * float(np.mean([ids[i, 0] in rel for i, rel in enumerate(relevant)]))

    return {"reloaded_shape": tuple(small.shape), "adaptive_hit@1": recall1(adaptive.ids),
            "full_hit@1": recall1(exact.ids), "adaptive_mflops": adaptive.cost.mflops_per_query,
            "full_mflops": exact.cost.mflops_per_query, "shortlist_dim": shortlist_dim, "shortlist_k": shortlist_k}


def run(output_dir: str = "outputs/mrl-minilm-chatterbot", model_path: str | None = None, epochs: float = 1.0,
        seed: int = 0, limit_train: int | None = None, progress: bool = True, log=print) -> dict:
    """The whole demo; returns ``{"table": ResultsTable, "adaptive": {...}, "output_dir": Path}``."""
    import torch

    from .data.text import load_chatterbot_pairs
    from .hub import save_for_hub
    from .modeling import MRLBertModel

    torch.manual_seed(seed)
    start = time.time()
    packaged = model_path is None
    model_path = model_path or packaged_minilm()
    name = "all-MiniLM-L6-v2" if packaged else Path(model_path).name  # another --model: its own name and sizes
    methods = RESULTS_METHODS if packaged else (RESULTS_METHODS[0], f"original {name}, sliced")
    nesting = checkpoint_nesting_list(model_path)
    default_dim = DEFAULT_DIM if DEFAULT_DIM in nesting else nesting[(len(nesting) - 1) // 2]
    train, test = split_pairs(load_chatterbot_pairs(), seed=seed)
    if limit_train is not None:  # a seeded sample: the first pairs come from three of the 21 topic files
        train = random.Random(seed).sample(train, min(limit_train, len(train)))
    questions, answers, _ = group_pairs(test)
    log(f"chatterbot-corpus: {len(train)} training pairs, {len(test)} held-out pairs ({len(questions)} questions "
        f"over {len(answers)} answers); nesting_list={nesting}")

    log("[1/4] scoring the original model, sliced, on held-out question -> answer retrieval ...")
    original = MRLBertModel.from_pretrained(model_path, nesting_list=[nesting[-1]]).eval()
    per_model = {methods[1]: evaluate(original, test, nesting)}
    del original

    log(f"[2/4] MRL fine-tuning ({epochs:g} epoch, nested InfoNCE at sizes {nesting}) ...")
    model, trainer = finetune(model_path, train, nesting, epochs=epochs, seed=seed, progress=progress)
    per_model = {methods[0]: evaluate(model, test, nesting), **per_model}
    table = results_table(per_model)

    log(f"[3/4] saving the checkpoint (default size truncate_dim={default_dim}) with its model card and plot ...")
    steps = trainer.state.global_step
    model.config.truncate_dim = default_dim  # what encode() and the other tools give unless asked for another size
    out = save_for_hub(
        model, output_dir, repo_id=f"your-name/{Path(output_dir).name}", results=table,
        model_method=methods[0], base_model=BASE_MODEL_HUB_ID if packaged else model_path,
        datasets=["chatterbot-corpus"],
        eval_dataset={"name": "chatterbot-corpus (English, 20% of questions held out)", "type": "chatterbot-corpus",
                      "split": "held-out"},
        eval_description=("Held-out question -> answer retrieval (cosine similarity, each embedding cut to the size "
                          f"and L2-normalised after cutting), in %. The baseline is the original {name} cut to the "
                          "same size."),
        model_name=Path(output_dir).name,
        description=(f"{name} fine-tuned with Matryoshka Representation Learning on chatterbot-corpus question -> "
                     f"answer pairs, so that its first {', '.join(map(str, nesting[:3]))}, ... dims are embeddings "
                     "on their own."),
        training=(f"`mrl-hf demo`: {len(train)} pairs, {epochs:g} epoch ({steps} steps), batch 32, lr 5e-5, "
                  f"nested InfoNCE with in-batch negatives, temperature {model.config.contrastive_temperature}, "
                  "all sizes weighted 1."),
    )

    log("[4/4] reloading it and running adaptive retrieval ...")
    adaptive = adaptive_retrieval(str(out), test, shortlist_dim=nesting[1])
    return {"table": table, "adaptive": adaptive, "output_dir": out, "seconds": time.time() - start,
            "default_dim": default_dim}
