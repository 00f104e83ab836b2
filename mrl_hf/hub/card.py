"""Model cards for mrl_hf checkpoints: YAML metadata, per-dim evaluation table, plot and usage snippets.

Rendered with ``huggingface_hub.ModelCard.from_template`` from ``templates/model_card.md`` (shipped inside the
package so installed copies find it). Evaluation numbers come as a ``mrl_hf.evaluation.ResultsTable``
(method, metric, dim, value): the card shows every method per dim, and the model-index metadata holds this
model's row (``model_method``) at every dim, one metric entry per (metric, dim) with ``config: dim=<m>``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
PLOT_FILE = "mrl_accuracy_vs_dim.png"

# architecture -> (pipeline_tag, what is nested, what each prefix is trained to be, extra tags)
_KINDS = {
    "MRLBertModel": ("feature-extraction", "embedding", "an embedding", ["sentence-similarity", "text-embeddings"]),
    "MRLBertForMaskedLM": ("fill-mask", "hidden state", "the input of the (tied) MLM decoder", ["fill-mask"]),
    "MRLModelForMaskedLM": ("fill-mask", "hidden state", "the input of the (tied) MLM decoder", ["fill-mask"]),
    "MRLResNetForImageClassification": ("image-classification", "image feature", "a classifier input", ["vision"]),
    "MRLViTForImageClassification": ("image-classification", "image feature", "a classifier input", ["vision"]),
    "MRLModelForImageClassification": ("image-classification", "image feature", "a classifier input", ["vision"]),
    "MRLModelForImageEmbedding": ("image-feature-extraction", "image embedding", "an embedding", ["vision"]),
    "MRLModelForTextEmbedding": ("feature-extraction", "embedding", "an embedding",
                                 ["sentence-similarity", "text-embeddings"]),
    "MRLModelForSequenceClassification": ("text-classification", "text feature", "a classifier input",
                                          ["text-classification"]),
    # no pipeline tag: transformers' zero-shot-image-classification pipeline cannot load it (the Hub would offer it)
    "MRLAlignModel": (None, "image and text embedding", "an embedding", ["vision", "multimodal",
                                                                        "zero-shot-image-classification"]),
}


def _architecture(config) -> str:
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ValueError("config.architectures is empty; render the card from the model, or save the model first "
                         "(save_pretrained records its class).")
    return names[0]


def _sample_dim(config) -> int:
    """The size the snippets use: the default size where it is a trained one, else a middle trained size."""
    if config.truncate_dim in config.nesting_list:
        return config.truncate_dim
    dims = config.nesting_list
    return dims[(len(dims) - 1) // 2]


def usage_snippets(architecture: str, repo_id: str, dim: int, remote_code: bool,
                   asymmetric: bool = False, adaptor_module: bool = False,
                   query_prompt: str = "", task_in_forward: bool | None = None) -> dict[str, str | None]:
    """Code for the card: ``mrl_hf_snippet``, ``transformers_snippet`` and ``st_snippet`` (None if not a text
    embedding model). ``asymmetric``: queries and documents are embedded apart (``encode_query``: an asymmetric
    adaptor, or prompts). ``adaptor_module``: its adaptor has an MLP, which the sentence-transformers export writes
    as a module file. ``query_prompt``: what the model puts before a query (the raw transformers snippet adds it).
    ``task_in_forward``: the forward takes ``task="query"`` (an asymmetric adaptor; default: ``asymmetric``)."""
    trust = ", trust_remote_code=True" if remote_code else ""
    register = "" if remote_code else "import mrl_hf.modeling  # registers the mrl_hf model types\n"
    if architecture in ("MRLBertModel", "MRLModelForTextEmbedding"):
        query_task = ', task="query"' if (asymmetric if task_in_forward is None else task_in_forward) else ""
        encode = (('queries = model.encode_query(["How do I reset my password?"], normalize=True)  # embedded as '
                   'queries\n'
                   'documents = model.encode_document(["Open Settings, then Reset password."], normalize=True)\n'
                   f"print(queries.shape, documents.shape)  # (1, {dim}) (1, {dim})") if asymmetric else
                  ('embeddings = model.encode(["How do I reset my password?", "Where is my order?"], normalize=True)\n'
                   f"print(embeddings.shape)  # (2, {dim})"))
        # MRLBertModel exports to a plain-BERT folder (no remote code, but for an adaptor's MLP module: what vLLM
        # serves); the model for any backbone has no such export (mrl-hf export refuses it), and its checkpoint loads
        # in sentence-transformers as it is
        if architecture == "MRLBertModel":
            st_intro = (f"Export a sentence-transformers folder once (`mrl-hf export --sentence-transformers {repo_id} "
                        "./st-model`), then load it with the size you want")
            st_register = ""
            st_source = '"./st-model"' + (", trust_remote_code=True" if adaptor_module else "")
        else:
            st_intro = "The checkpoint loads in sentence-transformers as it is, with the size you want"
            st_register, st_source = register, f'"{repo_id}"{trust}'
        return {
            "mrl_hf_snippet": (
                f"from mrl_hf.modeling import {architecture}\n\n"
                f'model = {architecture}.from_pretrained("{repo_id}", truncate_dim={dim})\n' + encode),
            "transformers_snippet": (
                f"{register}from transformers import AutoModel, AutoTokenizer\n\n"
                f'model = AutoModel.from_pretrained("{repo_id}"{trust}, truncate_dim={dim})\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
                f"batch = tokenizer([{json.dumps(query_prompt + 'How do I reset my password?', ensure_ascii=False)}], "
                'padding=True, return_tensors="pt")'
                + ("  # with the query prompt\n" if query_prompt else "\n") +
                f"out = model(**batch, normalize=True{query_task})\n"
                f"out.truncated_embeddings  # (1, {dim}): the first {dim} dims, L2-normalised after slicing"),
            "st_intro": st_intro,
            "st_snippet": (
                f"{st_register}from sentence_transformers import SentenceTransformer\n\n"
                f"model = SentenceTransformer({st_source}, truncate_dim={dim})\n"
                f'embeddings = model.{"encode_query" if asymmetric else "encode"}(["How do I reset my password?"], '
                'normalize_embeddings=True)\n'
                f"print(embeddings.shape)  # (1, {dim})"),
        }
    if architecture in ("MRLBertForMaskedLM", "MRLModelForMaskedLM"):
        return {
            "mrl_hf_snippet": (
                f"from mrl_hf.modeling import {architecture}\n\n"
                f'model = {architecture}.from_pretrained("{repo_id}", truncate_dim={dim})\n'
                'text = f"Paris is the {model.tokenizer.mask_token} of France."\n'
                'batch = model.tokenizer(text, return_tensors="pt")\n'
                f"logits = model(**batch).logits  # vocabulary logits from the first {dim} dims"),
            "transformers_snippet": (
                f"{register}from transformers import AutoModelForMaskedLM\n\n"
                f'model = AutoModelForMaskedLM.from_pretrained("{repo_id}"{trust}, truncate_dim={dim})'),
            "st_snippet": None,
        }
    if architecture == "MRLModelForSequenceClassification":
        return {
            "mrl_hf_snippet": (
                f"from mrl_hf.modeling import {architecture}\n\n"
                f'model = {architecture}.from_pretrained("{repo_id}")\n'
                'batch = model.tokenizer(["I loved this film."], return_tensors="pt")\n'
                f"logits = model(**batch, truncate_dim={dim}).logits  # the classifier on the first {dim} dims"),
            "transformers_snippet": (
                f"{register}from transformers import AutoModelForSequenceClassification\n\n"
                f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}"{trust}, truncate_dim={dim})'),
            "st_snippet": None,
        }
    if architecture == "MRLAlignModel":
        return {
            "mrl_hf_snippet": (
                f"from mrl_hf.modeling import {architecture}\n\n"
                f'model = {architecture}.from_pretrained("{repo_id}")\n'
                f"embeddings = model.get_image_features(pixel_values, truncate_dim={dim}, normalize=True)"
                f"  # (batch, {dim})\n"
                f"# texts, in the same space: model.get_text_features(input_ids, attention_mask, truncate_dim={dim}, "
                "normalize=True)"),
            "transformers_snippet": (
                f"{register}from transformers import AutoModel\n\n"
                f'model = AutoModel.from_pretrained("{repo_id}"{trust}, truncate_dim={dim})\n'
                f"embeddings = model.get_image_features(pixel_values, normalize=True)  # (batch, {dim})"),
            "st_snippet": None,
        }
    if architecture == "MRLModelForImageEmbedding":
        return {
            "mrl_hf_snippet": (
                f"from mrl_hf.modeling import {architecture}\n\n"
                f'model = {architecture}.from_pretrained("{repo_id}")\n'
                f"embeddings = model.get_image_features(pixel_values, truncate_dim={dim}, normalize=True)"
                f"  # (batch, {dim})"),
            "transformers_snippet": (
                f"{register}from transformers import AutoModel\n\n"
                f'model = AutoModel.from_pretrained("{repo_id}"{trust}, truncate_dim={dim})\n'
                "out = model(pixel_values=pixel_values, normalize=True)\n"
                f"out.truncated_embeddings  # (batch, {dim}): the first {dim} dims, L2-normalised after slicing"),
            "st_snippet": None,
        }
    return {
        "mrl_hf_snippet": (
            f"from mrl_hf.modeling import {architecture}\n\n"
            f'model = {architecture}.from_pretrained("{repo_id}")\n'
            "out = model(pixel_values)  # pixel_values: (batch, channels, height, width)\n"
            f"logits_{dim} = out.nested_logits[model.config.nesting_list.index({dim})]  # the classifier on {dim} dims"),
        "transformers_snippet": (
            f"{register}from transformers import AutoModelForImageClassification\n\n"
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}"{trust})'),
        "st_snippet": None,
    }


def _quantized(config) -> dict[str, list[int]]:
    trained = getattr(config, "matryoshka_precisions", None) or {}
    return {name: list(sizes) for name, sizes in trained.items() if name != "float32"}


def precision_summary(config) -> str:
    """The trained (size, precision) pairs in words: ``float32 at every size; binary at 12, 24``."""
    parts = ["float32 at every size"]
    parts += [f"{name} at {', '.join(str(m) for m in sizes)}" for name, sizes in _quantized(config).items()]
    return "; ".join(parts)


def _asymmetric_adaptor(config) -> bool:
    from ..modeling.text_common import config_has_asymmetric_adaptor  # on use: the card module stays light

    return config_has_asymmetric_adaptor(config)


def _prompt(config, task: str) -> str:
    from ..modeling.text_common import resolve_prompt

    return resolve_prompt(config, task)


def _asymmetric(config) -> bool:
    """Queries and documents are embedded apart: an asymmetric adaptor, or query / document prompts."""
    return _asymmetric_adaptor(config) or bool(_prompt(config, "query") or _prompt(config, "document"))


def codes_snippet(architecture: str, repo_id: str, config) -> str | None:
    """How to get the codes the model was trained for (None for a float-only or non-text model)."""
    quantized = _quantized(config)
    if not quantized or architecture not in ("MRLBertModel", "MRLModelForTextEmbedding"):
        return None
    name = "binary" if "binary" in quantized else next(iter(quantized))
    sizes = quantized[name]
    precision, dim = ("ubinary" if name == "binary" else name), sizes[0]
    lines = [f"from mrl_hf.modeling import {architecture}", "",
             f'model = {architecture}.from_pretrained("{repo_id}")',
             f'codes = model.encode(["How do I reset my password?", "Where is my order?"], truncate_dim={dim}, '
             f'precision="{precision}"' + (', task="query")' if _asymmetric(config) else ")")]
    if name == "binary":
        lines.append(f"print(codes.shape, codes.dtype)  # (2, {-(-dim // 8)}) uint8: {dim} sign bits, packed "
                     "(sentence-transformers' quantize_embeddings format)")
    else:
        lines.append(f"print(codes.shape, codes.dtype)  # (2, {dim}) int8; pass ranges= / calibration_embeddings= "
                     "to calibrate on your corpus")
    return "\n".join(lines)


def _metric_slug(metric: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", metric.lower().replace("@", "_at_")).strip("_")


def eval_results(results, model_method: str, model_name: str, task_type: str, dataset: dict) -> list[EvalResult]:
    """One ``EvalResult`` per (metric, dim) of ``model_method`` in ``results`` (a ResultsTable)."""
    out = []
    for metric in results.metrics:
        for dim, value in results.series(model_method, metric).items():
            out.append(EvalResult(
                task_type=task_type, dataset_type=dataset["type"], dataset_name=dataset["name"],
                dataset_split=dataset.get("split"), metric_type=_metric_slug(metric),
                metric_name=f"{metric} (dim {dim})", metric_config=f"dim={dim}", metric_value=round(float(value), 2),
            ))
    return out


def render_model_card(
    model_or_config,
    repo_id: str = "your-name/mrl-model",
    *,
    results=None,
    model_method: str | None = None,
    eval_dataset: dict | None = None,
    eval_description: str | None = None,
    task_type: str | None = None,
    plot_file: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    description: str | None = None,
    training: str | None = None,
    tags: list[str] | None = None,
    remote_code: bool = False,
) -> ModelCard:
    """A ``ModelCard`` for an mrl_hf model (or its config) from the package template.

    results: ``ResultsTable`` of per-dim metrics (percent); ``model_method`` is this model's method in it
    (default: the first). eval_dataset: ``{"name": .., "type": .., "split": ..}`` for the model-index.
    base_model: a Hub repo id (a local path is left out of the metadata). plot_file: the name of the
    accuracy-vs-dim image saved next to the card.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "nesting_list"):
        raise TypeError(f"expected an mrl_hf model or config, got {type(model_or_config).__name__} without "
                        "nesting_list.")
    if hasattr(model_or_config, "config"):  # the first known mrl_hf class, so subclasses get the right card
        architecture = next((c.__name__ for c in type(model_or_config).__mro__ if c.__name__ in _KINDS),
                            type(model_or_config).__name__)
    else:
        architecture = _architecture(config)
    pipeline_tag, representation, prefix_role, kind_tags = _KINDS.get(
        architecture, ("feature-extraction", "representation", "a representation", []))
    if base_model is not None and (Path(base_model).exists() or base_model.count("/") != 1):
        base_model = None  # the Hub only accepts repo ids here
    model_name = model_name or repo_id.split("/")[-1]
    tags, datasets = ([value] if isinstance(value, str) else value for value in (tags, datasets))  # one name
    all_tags = ["mrl_hf", "matryoshka", "matryoshka-representation-learning", *kind_tags, *(tags or [])]

    eval_list, eval_table = None, ""
    if results is not None and len(results):
        model_method = model_method or results.methods[0]
        if model_method not in results.methods:
            raise ValueError(f"model_method={model_method!r} is not a method of the results; choose one of "
                             f"{results.methods}.")
        if eval_dataset is None or not {"name", "type"} <= set(eval_dataset):
            raise ValueError("results need eval_dataset={'name': ..., 'type': ...} (and optionally 'split') for "
                             "the model-index metadata.")
        eval_list = eval_results(results, model_method, model_name, task_type or _default_task(pipeline_tag),
                                 eval_dataset)
        eval_table = "\n\n".join(results.to_markdown(metric) for metric in results.metrics)
        eval_table = re.sub(r"^(\S[^\n|]*)\n\|", r"**\1** (%)\n\n|", eval_table, flags=re.M)

    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, tags=list(dict.fromkeys(all_tags)),
        base_model=base_model, datasets=datasets or None, license=license, model_name=model_name,
        eval_results=eval_list,
    )
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        model_name=model_name, repo_id=repo_id,
        description=description or f"A Matryoshka {representation} model ({architecture}).",
        architecture=architecture, model_type=config.model_type, base_model=base_model,
        embedding_dim=config.matryoshka_embedding_dim, nesting_list=list(config.nesting_list),
        truncate_dim=config.truncate_dim, efficient=config.efficient,
        has_head=prefix_role != "an embedding",  # classifiers and masked LMs; not embedding models or ALIGN
        relative_importance=config.relative_importance, normalize_embeddings=config.normalize_embeddings,
        representation=representation, prefix_role=prefix_role, datasets=datasets,
        eval_table=eval_table,
        eval_description=eval_description or f"Quality at each representation size on {_dataset_label(eval_dataset)}.",
        plot_file=plot_file if eval_table else None, plot_metric=results.metrics[0] if eval_table else None,
        training=training, remote_code=remote_code, precisions=precision_summary(config),
        codes_snippet=codes_snippet(architecture, repo_id, config),
        **usage_snippets(architecture, repo_id, _sample_dim(config), remote_code, asymmetric=_asymmetric(config),
                         adaptor_module=bool((getattr(config, "adaptor", None) or {}).get("hidden_dim")),
                         query_prompt=_prompt(config, "query"), task_in_forward=_asymmetric_adaptor(config)),
    )


def _default_task(pipeline_tag: str | None) -> str:
    if pipeline_tag is None:  # the ALIGN models: image-text retrieval and zero-shot classification
        return "zero-shot-image-classification"
    return {"feature-extraction": "retrieval", "fill-mask": "fill-mask"}.get(pipeline_tag, pipeline_tag)


def _dataset_label(dataset: dict | None) -> str:
    if not dataset:
        return "the evaluation data"
    split = f" ({dataset['split']} split)" if dataset.get("split") else ""
    return f"{dataset['name']}{split}"
