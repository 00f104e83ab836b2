"""Per-size evaluation with the ``mteb`` library (2.x): one mteb run per representation size, into a ResultsTable.

- ``MRLMtebEncoder(model, dim)``: an mrl_hf text model as an mteb encoder at one size (the first ``dim`` dims,
  L2-normalised after slicing), with a ``ModelMeta`` built locally (no Hub look-up).
- ``local_retrieval_task(...)`` / ``retrieval_task_from_pairs(...)`` / ``chatterbot_retrieval_task()``: real
  mteb retrieval tasks whose data is held in memory, so nothing is downloaded.
- ``evaluate_mteb(model, tasks, dims)``: runs ``mteb.evaluate`` at every size and returns a ``ResultsTable``
  (values in %) that ``mrl_hf.hub.render_model_card(..., results=table)`` shows as a sizes x metrics table.

mteb is imported on first use (``pip install mteb``); importing this module does not import it. Results are
written only where asked (``output_folder``); with no folder, mteb's results cache is switched off.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..adaptor import TASKS, task_kwargs
from ..nesting import validate_dim
from .table import ResultsTable

DEFAULT_RETRIEVAL_METRICS = ("ndcg_at_10", "recall_at_1", "recall_at_10", "mrr_at_10")
"""The scores reported for a retrieval task next to its main score (keys of mteb's scores)."""

_METRIC_NAMES = {"ndcg": "nDCG", "map": "MAP", "mrr": "MRR", "recall": "recall", "precision": "precision",
                 "hit_rate": "hit rate", "naucs": "nAUC"}


def _import_mteb():
    """``import mteb``, with a clear message if it is missing or too old.

    ``import mteb`` creates its default results cache folder (``~/.cache/mteb``, or ``$MTEB_CACHE``) at import time.
    On the first import from here that folder is pointed at a throwaway temporary folder while mteb loads, and mteb's
    default cache is then pointed back at its usual place (created only if someone saves results there), so using
    this module leaves nothing in the home folder.
    """
    if "mteb" in sys.modules:
        return _check_version(sys.modules["mteb"])
    redirect = "MTEB_CACHE" not in os.environ
    tmp = tempfile.mkdtemp(prefix="mrl_hf_mteb_import_") if redirect else None
    if redirect:
        os.environ["MTEB_CACHE"] = tmp
    try:
        import mteb
    except ModuleNotFoundError as e:
        if e.name != "mteb":
            raise
        raise ImportError("mrl_hf.evaluation.mteb_eval needs the mteb library (2.x): pip install mteb") from e
    finally:
        if redirect:
            os.environ.pop("MTEB_CACHE", None)
            _repoint_default_caches(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return _check_version(mteb)


def _repoint_default_caches(tmp: str) -> None:
    """Point every mteb ``ResultCache`` made at import time inside ``tmp`` back to mteb's default folder."""
    cache_cls = getattr(sys.modules.get("mteb.cache"), "ResultCache", None)
    if cache_cls is None:
        return
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "mteb" or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, cache_cls) and str(value.cache_path).startswith(tmp):
                value.cache_path = value.default_cache_path


def _check_version(mteb):
    if not hasattr(mteb, "evaluate"):
        raise ImportError(f"mrl_hf.evaluation.mteb_eval needs mteb 2.x (mteb.evaluate); found mteb "
                          f"{getattr(mteb, '__version__', '?')}: pip install -U mteb")
    return mteb


# --------------------------------------------------------------------------------------------------- the model


def _full_dim(model) -> int:
    config = model.config
    full = getattr(config, "matryoshka_embedding_dim", None)
    return int(full if full is not None else max(config.nesting_list))


def default_model_name(model) -> str:
    """``org/name`` for mteb: the model's Hub id if it was loaded from one, else ``mrl_hf/<folder name>``."""
    path = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not os.path.exists(path):
        return path
    folder = Path(path.rstrip("/\\")).name if path else ""
    return f"mrl_hf/{folder or getattr(model.config, 'model_type', None) or type(model).__name__}"


def mteb_model_meta(model, dim: int, model_name: str | None = None, revision: str | None = None,
                    use_instructions: bool = False):
    """mteb ``ModelMeta`` of ``model`` at size ``dim``, built from the model itself (nothing is looked up).

    ``embed_dim`` is ``dim`` and ``experiment_kwargs={"embed_dim": dim}`` (what ``ModelMeta.load_model(embed_dim=)``
    records for a Matryoshka size), so mteb keeps the results of each size apart.
    """
    mteb = _import_mteb()
    dim = validate_dim(dim, _full_dim(model), name="dim")
    params = getattr(model, "parameters", None)
    n_parameters = int(sum(p.numel() for p in params())) if callable(params) else None
    max_tokens = getattr(model.config, "max_position_embeddings", None)
    return mteb.models.ModelMeta(
        loader=None, name=model_name or default_model_name(model), revision=revision or "no_revision_available",
        release_date=None, languages=None, n_parameters=n_parameters, memory_usage_mb=None,
        max_tokens=float(max_tokens) if max_tokens else None, embed_dim=dim, license=None, open_weights=None,
        public_training_code=None, public_training_data=None, framework=["PyTorch", "Transformers"],
        similarity_fn_name="cosine", use_instructions=use_instructions, training_datasets=None,
        modalities=["text"], experiment_kwargs={"embed_dim": dim},
    )


class MRLMtebEncoder:
    """An mrl_hf text model as an mteb encoder (``mteb.EncoderProtocol``) at one size.

    ``encode`` embeds the texts of mteb's data loader with ``model.encode(texts, truncate_dim=dim, normalize=True)``
    (slice, then L2-normalise) and similarity is cosine. ``model`` is anything with that ``encode`` and a
    ``config.nesting_list``. ``prompts`` optionally prefixes texts by mteb prompt type, e.g.
    ``{"query": "query: ", "document": "passage: "}``; ``encode_kwargs`` go to ``model.encode`` (e.g.
    ``{"max_length": 128}``). A model whose adaptor is asymmetric embeds mteb's queries with ``task="query"``.
    """

    def __init__(self, model, dim: int, *, model_name: str | None = None, revision: str | None = None,
                 prompts: Mapping[str, str] | None = None, encode_kwargs: Mapping[str, Any] | None = None):
        if not callable(getattr(model, "encode", None)) or not hasattr(getattr(model, "config", None),
                                                                        "nesting_list"):
            raise TypeError(f"expected an mrl_hf text model with encode() and config.nesting_list, got "
                            f"{type(model).__name__}.")
        self.model = model
        self.dim = validate_dim(dim, _full_dim(model), name="dim")
        self.prompts = dict(prompts or {})
        own = getattr(model.config, "prompts", None)
        if self.prompts and own:
            raise ValueError(f"the model puts its own prompts {own} before the texts (config.prompts); leave "
                             "prompts= out, or set model.config.prompts = None to use these instead.")
        self.encode_kwargs = dict(encode_kwargs or {})
        fixed = sorted({"truncate_dim", "normalize", "task"} & set(self.encode_kwargs))
        if fixed:
            raise ValueError(f"encode_kwargs sets {fixed}, which the encoder decides (the size is dim={self.dim}, "
                             "prefixes are normalised, the task follows mteb's prompt type); leave them out.")
        self.mteb_model_meta = mteb_model_meta(model, self.dim, model_name, revision,
                                               use_instructions=bool(self.prompts or own))

    def __repr__(self) -> str:
        return f"MRLMtebEncoder({self.mteb_model_meta.name!r}, dim={self.dim})"

    def encode(self, inputs, *, task_metadata=None, hf_split: str | None = None, hf_subset: str | None = None,
               prompt_type=None, **kwargs) -> np.ndarray:
        """``(n, dim)`` float32 embeddings of the ``"text"`` column of mteb's data loader ``inputs``."""
        texts = []
        for batch in inputs:
            if "text" not in batch:
                raise TypeError(f"MRLMtebEncoder embeds text only; got inputs with {sorted(batch)}.")
            texts.extend(batch["text"])
        prefix = self.prompts.get(getattr(prompt_type, "value", prompt_type), "") if prompt_type else ""
        if prefix:
            texts = [prefix + text for text in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        task = getattr(prompt_type, "value", prompt_type)
        routed = task_kwargs(self.model, task) if task in TASKS else {}
        settings = {"batch_size": int(kwargs.get("batch_size") or 32), **self.encode_kwargs}  # the user's own wins
        out = self.model.encode(texts, truncate_dim=self.dim, normalize=True, **routed, **settings)
        out = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise ValueError(f"model.encode returned shape {out.shape}, expected {(len(texts), self.dim)}.")
        return out

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


# --------------------------------------------------------------------------------------------------- the tasks


@cache
def _local_task_base():
    _import_mteb()
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class LocalRetrievalTask(AbsTaskRetrieval):
        """An mteb retrieval task whose queries, corpus and relevance judgements are held in memory.

        ``local_queries`` / ``local_corpus`` are ``{id: text}``, ``local_relevant_docs`` ``{query id: {doc id: 1}}``;
        ``load_data`` builds mteb's datasets from them (nothing is downloaded).
        """

        local_queries: dict[str, str]
        local_corpus: dict[str, str]
        local_relevant_docs: dict[str, dict[str, int]]

        def load_data(self, num_proc: int | None = None, *, timer=None, **kwargs) -> None:
            if self.data_loaded:
                return
            corpus = Dataset.from_dict({"id": list(self.local_corpus), "text": list(self.local_corpus.values())})
            queries = Dataset.from_dict({"id": list(self.local_queries), "text": list(self.local_queries.values())})
            self.dataset = {"default": {split: {
                "corpus": corpus, "queries": queries, "top_ranked": None,
                "relevant_docs": {q: dict(docs) for q, docs in self.local_relevant_docs.items()},
            } for split in self.metadata.eval_splits}}
            self.data_loaded = True

    LocalRetrievalTask.__module__ = __name__
    return LocalRetrievalTask


def local_retrieval_task(queries: Mapping[str, str], corpus: Mapping[str, str],
                         relevant_docs: Mapping[str, Iterable[str] | Mapping[str, int]], *, name: str,
                         description: str | None = None, split: str = "test", language: str = "eng-Latn",
                         main_score: str = "ndcg_at_10", **metadata):
    """A real mteb retrieval task (an ``AbsTaskRetrieval``) from in-memory data; nothing is downloaded.

    queries / corpus: ``{id: text}``. relevant_docs: for each query id, its relevant doc ids (or ``{doc id: grade}``);
    every query needs at least one. ``metadata`` adds ``TaskMetadata`` fields (``reference``, ``domains``,
    ``license``, ...). The dataset "revision" is a hash of the data, so results of different data never mix.
    """
    mteb = _import_mteb()
    queries = {str(k): str(v) for k, v in queries.items()}
    corpus = {str(k): str(v) for k, v in corpus.items()}
    if not queries or not corpus:
        raise ValueError("a retrieval task needs at least one query and one document.")
    qrels: dict[str, dict[str, int]] = {}
    for qid, docs in relevant_docs.items():
        if isinstance(docs, (str, int)):  # one id; a string is not iterated into characters
            docs = [docs]
        docs = dict(docs) if isinstance(docs, Mapping) else dict.fromkeys(docs, 1)
        qrels[str(qid)] = {str(d): int(g) for d, g in docs.items()}
    for qid in queries:
        if not any(g > 0 for g in qrels.get(qid, {}).values()):
            raise ValueError(f"query {qid!r} has no relevant document.")
    for qid, docs in qrels.items():
        if qid not in queries:
            raise ValueError(f"relevant_docs names query {qid!r}, which is not in queries.")
        missing = [d for d in docs if d not in corpus]
        if missing:
            raise ValueError(f"relevant_docs[{qid!r}] names document {missing[0]!r}, which is not in the corpus.")
    digest = hashlib.sha256(json.dumps([queries, corpus, qrels], sort_keys=True).encode()).hexdigest()[:16]
    task_metadata = mteb.TaskMetadata(**{
        "name": name, "description": description or f"Local retrieval task {name} ({len(queries)} queries, "
                                                    f"{len(corpus)} documents).",
        "dataset": {"path": f"local/{name}", "revision": digest}, "type": "Retrieval", "category": "t2t",
        "modalities": ["text"], "eval_splits": [split], "eval_langs": [language], "main_score": main_score,
        "bibtex_citation": "", **metadata,
    })
    base = _local_task_base()
    cls = type(re.sub(r"\W", "_", name), (base,), {
        "metadata": task_metadata, "local_queries": queries, "local_corpus": corpus, "local_relevant_docs": qrels,
        "__module__": __name__, "__doc__": task_metadata.description,
    })
    return cls()


def retrieval_task_from_pairs(pairs: Iterable[Sequence[str]], *, name: str,
                              dedupe_key: Callable[[str], str] | None = None, **kwargs):
    """A local mteb retrieval task from ``(query, relevant document)`` pairs (extra tuple items are ignored).

    Repeated queries and documents become one query / one document (``dedupe_key(text)`` decides which documents
    are the same, default the exact text; the first text is kept); a query's relevant documents are all its pairs'
    documents. ``kwargs`` go to ``local_retrieval_task``.
    """
    key = dedupe_key or (lambda text: text)
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    q_ids: dict[str, str] = {}
    d_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for query, doc, *_ in pairs:
        if query not in q_ids:
            q_ids[query] = f"q{len(q_ids)}"
            queries[q_ids[query]] = query
        k = key(doc)
        if k not in d_ids:
            d_ids[k] = f"d{len(d_ids)}"
            corpus[d_ids[k]] = doc
        qrels.setdefault(q_ids[query], {})[d_ids[k]] = 1
    return local_retrieval_task(queries, corpus, qrels, name=name, **kwargs)


def _same_answer(text: str) -> str:
    return " ".join(text.split()).casefold()


def chatterbot_retrieval_task(held_out: float = 0.2, seed: int = 0, language: str = "english",
                              name: str = "ChatterbotQARetrieval"):
    """Held-out chatterbot-corpus question -> answer retrieval as a local mteb task (offline).

    The questions held out by ``mrl_hf.demo_text.split_pairs(pairs, held_out, seed)`` (the demo's held-out set with
    the defaults) are the queries; their answers are the corpus (answers differing only in case or spacing are one
    document). Needs the ``chatterbot-corpus`` package (``pip install 'mrl-hf[demo]'``).
    """
    from ..data.text import load_chatterbot_pairs
    from ..recipes import split_pairs

    _, test = split_pairs(load_chatterbot_pairs(language), held_out=held_out, seed=seed)
    if not test:
        raise ValueError(f"held_out={held_out} leaves no held-out questions.")
    return retrieval_task_from_pairs(
        test, name=name, dedupe_key=_same_answer,
        description=(f"chatterbot-corpus ({language}): {held_out:.0%} of the questions held out (seed {seed}), each "
                     "to be matched with its answers among all held-out answers. Built from the installed "
                     "chatterbot-corpus package; nothing is downloaded."),
        reference="https://github.com/gunthercox/chatterbot-corpus", domains=["Spoken"],
        task_subtypes=["Question answering"], sample_creation="found", annotations_creators="human-annotated",
    )


def _resolve_tasks(tasks) -> list:
    mteb = _import_mteb()
    if isinstance(tasks, mteb.Benchmark):
        tasks = tasks.tasks
    if isinstance(tasks, (str, mteb.AbsTask)):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks to evaluate.")
    names = [t for t in tasks if isinstance(t, str)]
    try:
        by_name = {t.metadata.name: t for t in mteb.get_tasks(tasks=names)} if names else {}
    except KeyError as exc:  # mteb's message for an unknown name
        raise ValueError(f"unknown mteb task in {names}: {exc.args[0] if exc.args else exc}") from None
    out = []
    for t in tasks:
        if isinstance(t, str):
            out.append(by_name[t])
        elif isinstance(t, mteb.AbsTask):
            out.append(t)
        else:
            raise TypeError(f"tasks must be mteb tasks or task names, got {type(t).__name__}.")
    return out


# --------------------------------------------------------------------------------------------------- evaluation


def _dims(model, dims) -> list[int]:
    full = _full_dim(model)
    if dims is None:
        dims = list(model.config.nesting_list)
    else:
        dims = [dims] if isinstance(dims, numbers.Integral) else list(dims)
    if not dims:
        raise ValueError("dims is empty.")
    return sorted({validate_dim(d, full, name="dim") for d in dims})


def run_mteb_per_dim(model, tasks, dims: Sequence[int] | None = None, output_folder: str | os.PathLike | None = None,
                     *, batch_size: int = 32, overwrite_strategy: str = "always", save_predictions: bool = False,
                     model_name: str | None = None, revision: str | None = None,
                     prompts: Mapping[str, str] | None = None, encode_kwargs: Mapping[str, Any] | None = None,
                     show_progress_bar: bool = False) -> dict:
    """``{dim: mteb.results.ModelResult}``: ``mteb.evaluate`` of ``MRLMtebEncoder(model, dim)`` on ``tasks`` at
    every size (default: ``model.config.nesting_list``). See ``evaluate_mteb``."""
    mteb = _import_mteb()
    dims = _dims(model, dims)
    tasks = _resolve_tasks(tasks)
    if save_predictions and output_folder is None:
        raise ValueError("save_predictions=True needs an output_folder.")
    cache = mteb.ResultCache(cache_path=Path(output_folder)) if output_folder is not None else None
    results = {}
    with _datasets_progress_bars(show_progress_bar):
        for dim in dims:
            encoder = MRLMtebEncoder(model, dim, model_name=model_name, revision=revision, prompts=prompts,
                                     encode_kwargs=encode_kwargs)
            predictions = Path(output_folder) / "predictions" / f"embed_dim_{dim}" if save_predictions else None
            results[dim] = mteb.evaluate(
                encoder, tasks, co2_tracker=False, raise_error=True, cache=cache,
                overwrite_strategy=overwrite_strategy, prediction_folder=predictions,
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
                show_progress_bar=show_progress_bar,
            )
    return results


@contextmanager
def _datasets_progress_bars(show: bool):
    """mteb maps its corpora with ``datasets`` (one progress bar per map); silence them unless asked for."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_disabled:
            enable_progress_bars()


def metric_label(key: str) -> str:
    """A readable name for an mteb score key: ``ndcg_at_10`` -> ``nDCG@10``, ``recall_at_1`` -> ``recall@1``."""
    m = re.fullmatch(r"(.+)_at_(\d+)", key)
    if m:
        return f"{_METRIC_NAMES.get(m.group(1), m.group(1))}@{m.group(2)}"
    return _METRIC_NAMES.get(key, key.replace("_", " "))


def _mean_scores(task_result) -> dict[str, float]:
    entries = [entry for split in task_result.scores.values() for entry in split]
    if not entries:
        raise ValueError(f"mteb returned no scores for {task_result.task_name}.")
    keys = [k for k, v in entries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(np.mean([e[k] for e in entries])) for k in keys if all(k in e for e in entries)}


def results_table(per_dim: Mapping[int, Any], tasks, metrics: Sequence[str] | None = None,
                  method: str = "MRL") -> ResultsTable:
    """``{dim: ModelResult}`` (from ``run_mteb_per_dim``) -> ``ResultsTable`` in percent, one row per (metric, dim).

    Metric names are ``"<task> <label>"`` (e.g. ``"ChatterbotQARetrieval nDCG@10"``). ``metrics``: mteb score keys
    for every task; default the task's main score, then ``DEFAULT_RETRIEVAL_METRICS`` where the task has them.
    Scores averaged over a task's splits and subsets, as mteb's ``get_score`` does.
    """
    tasks = _resolve_tasks(tasks)
    main = {t.metadata.name: t.metadata.main_score for t in tasks}
    table = ResultsTable()
    for dim in sorted(per_dim):
        found = {r.task_name: r for r in per_dim[dim].task_results}
        for task_name, main_score in main.items():
            if task_name not in found:
                raise KeyError(f"no mteb result for task {task_name} at dim {dim}.")
            scores = _mean_scores(found[task_name])
            if main_score not in scores and "main_score" in scores:
                scores[main_score] = scores["main_score"]
            keys = list(metrics) if metrics is not None else list(dict.fromkeys(
                [main_score, *(k for k in DEFAULT_RETRIEVAL_METRICS if k in scores)]))
            for key in keys:
                if key not in scores:
                    raise KeyError(f"task {task_name} has no score {key!r}; it has {sorted(scores)}.")
                table.add(method, f"{task_name} {metric_label(key)}", dim, 100.0 * scores[key])
    return table


def evaluate_mteb(model, tasks, dims: Sequence[int] | None = None, output_folder: str | os.PathLike | None = None,
                  *, metrics: Sequence[str] | None = None, method: str = "MRL", batch_size: int = 32,
                  overwrite_strategy: str = "always", save_predictions: bool = False, model_name: str | None = None,
                  revision: str | None = None, prompts: Mapping[str, str] | None = None,
                  encode_kwargs: Mapping[str, Any] | None = None, show_progress_bar: bool = False) -> ResultsTable:
    """Evaluate ``model`` with mteb at every size in ``dims`` (default its ``nesting_list``): a ``ResultsTable`` (%).

    tasks: mteb task objects (e.g. ``chatterbot_retrieval_task()``) or task names (``mteb.get_tasks``; those load
    their data from the Hub or its local cache). Each size is its own mteb model (``MRLMtebEncoder``: the first
    ``dim`` dims, L2-normalised; ``ModelMeta`` with ``embed_dim=dim``). mteb's results cache is off unless
    ``output_folder`` is given; then mteb writes ``<output_folder>/results/<model>/<revision>/experiments/
    embed_dim_<dim>/<task>.json`` (plus ``model_meta.json``, ``run_settings.jsonl``) and, with
    ``save_predictions``, ``<output_folder>/predictions/embed_dim_<dim>/<task>_predictions.json``.
    ``overwrite_strategy="always"`` re-runs every size (a model changed under the same name would otherwise be
    answered from the cache); ``"only-missing"`` resumes. See ``results_table`` for ``metrics`` and the names.
    """
    tasks = _resolve_tasks(tasks)
    per_dim = run_mteb_per_dim(model, tasks, dims, output_folder, batch_size=batch_size,
                               overwrite_strategy=overwrite_strategy, save_predictions=save_predictions,
                               model_name=model_name, revision=revision, prompts=prompts,
                               encode_kwargs=encode_kwargs, show_progress_bar=show_progress_bar)
    return results_table(per_dim, tasks, metrics=metrics, method=method)
