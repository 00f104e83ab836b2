"""MRL fine-tuning of a sentence embedding model on question -> answer pairs, with retrieval quality per size.

Trains all-MiniLM-L6-v2 (the packaged copy by default; any BERT checkpoint path or Hub id works) with the
nested InfoNCE loss (in-batch negatives) through MRLTrainer on chatterbot-corpus pairs, holding out 20% of
the questions. Prints hit@1, hit@10 and MRR (held-out question -> answer retrieval) at every size for:
the original model sliced, the model fine-tuned without MRL (only the full size in the loss) sliced, and the
MRL model.

    python examples/finetune_text_embeddings.py                # ~5 min on 2 CPU cores
    python examples/finetune_text_embeddings.py --model sentence-transformers/all-MiniLM-L6-v2
"""
from __future__ import annotations

import argparse

from mrl_hf.data.text import load_chatterbot_pairs
from mrl_hf.recipes import evaluate, finetune, split_pairs
from mrl_hf.recipes import packaged_minilm as default_model
from mrl_hf.distributed import end_distributed_run, is_main_process
from mrl_hf.evaluation.pairs import format_table
from mrl_hf.modeling import MRLBertModel


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
        trainer.save_model(args.save)  # every process calls it; the Trainer gathers shards and picks one writer
        if is_main_process():
            print(f"saved the MRL model to {args.save}")


if __name__ == "__main__":
    main()
    end_distributed_run()  # before exit: see its docstring
