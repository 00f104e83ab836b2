"""Export an ``MRLBertModel`` as a sentence-transformers folder.

The folder holds a plain BERT (``model_type: bert``), a Pooling module, a Dense module with no activation when the
model projects, and the modules of an attached ``MatryoshkaAdaptor``:
- an adaptor without MLP (a PCA rotation) becomes ``Normalize`` + ``Dense`` (its centring folded into the bias):
  ``SentenceTransformer(path)`` loads the folder without mrl_hf;
- an adaptor with its residual MLP becomes ``mrl_adaptor.MatryoshkaAdaptorModule``, a module file written into the
  folder: ``SentenceTransformer(path, trust_remote_code=True)`` loads it, still without mrl_hf.
``config_sentence_transformers.json`` carries the model's default ``truncate_dim`` (sentence-transformers >= 5.4
applies it) and cosine similarity; the BERT ``config.json`` carries the whole contract (``mrl_hf.contract``:
``matryoshka_dimensions`` and ``is_matryoshka`` for vLLM, ``nesting_list``, ``truncate_dim``). No Normalize module
closes the stack, since sentence-transformers truncates after its last module and a Normalize would normalise
*before* truncating: the output at every size is the raw slice (cosine scores are those of the normalised slice),
and ``encode(..., normalize_embeddings=True)`` slices, then normalises, as mrl_hf does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings

import torch
from torch import nn
from transformers import BertConfig, BertModel

from .contract import contract_keys, sentence_transformers_keys
from .modeling.bert import MRLBertModel
from .modeling.text_common import default_max_length, right_padding
from .saving import holds_files, owned_files

ADAPTOR_MODULE_FILE = "mrl_adaptor.py"
_SAVE_KEYS = {"model_type", "architectures", "auto_map", "transformers_version"}


def plain_bert_config(config) -> BertConfig:
    """The ``BertConfig`` of an ``MRLBertConfig``: the fields mrl_hf adds are dropped, the sizes (and the trained
    codes' settings) kept for readers."""
    own = {f.name for f in dataclasses.fields(type(config))} - {f.name for f in dataclasses.fields(BertConfig)}
    values = {k: v for k, v in config.to_dict().items() if k not in own | _SAVE_KEYS}
    plain = BertConfig(**values)
    for key, value in contract_keys(config).items():  # the sizes and default size, for vLLM and other readers
        setattr(plain, key, value)
    if config.precisions is not None:  # so that MRLBertModel.from_pretrained(export) knows its trained codes
        for key in ("precisions", "quantization_weight", "binary_surrogate"):
            setattr(plain, key, getattr(config, key))
    return plain


def _adaptor_modules(adaptor) -> tuple[list[nn.Module], bool]:
    """sentence-transformers modules computing ``adaptor``; True when they need ``mrl_adaptor.py``. An asymmetric
    adaptor becomes a ``Router`` with a query route (the query mean) and a document route (the default)."""
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.router import Router

    from .st_adaptor import MatryoshkaAdaptorModule

    state = {k: v.detach().float().cpu().clone() for k, v in adaptor.state_dict().items()}
    query_mean = state.pop("query_mean", None)

    def modules(mean):
        if adaptor.mlp is None:  # W (e/|e| - mean) = W e/|e| - W mean: a Dense with a bias
            weight = state["linear.weight"]
            return [Normalize(), Dense(adaptor.input_dim, adaptor.input_dim, bias=True, activation_function=None,
                                       init_weight=weight.clone(), init_bias=-(weight @ mean))]
        module = MatryoshkaAdaptorModule(adaptor.input_dim, adaptor.hidden_dim)
        module.load_state_dict({**state, "mean": mean})
        return [module]

    custom = adaptor.mlp is not None
    if query_mean is None:
        return modules(state["mean"]), custom
    return [Router.for_query_document(query_modules=modules(query_mean),
                                      document_modules=modules(state["mean"]))], custom


def export_sentence_transformers(model: MRLBertModel, path: str, tokenizer=None, max_seq_length: int | None = None,
                                 overwrite: bool = False) -> str:
    """Write ``model`` to ``path`` as a sentence-transformers model and return ``path``.

    vLLM serves the folder at every trained size, except with an attached adaptor: vLLM rebuilds the stack as
    Pooling -> Dense -> slice -> normalise and would skip or reorder the adaptor's modules (docs/serving.md).

    The folder's files are committed as one set (``mrl_hf.saving.owned_files``); a ``path`` holding files is written
    into only with ``overwrite=True``, which replaces a previous export's files and leaves any others alone.
    ``max_seq_length`` defaults to what ``model.encode`` uses.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    if not isinstance(model, MRLBertModel):
        raise TypeError(f"model must be an MRLBertModel, got {type(model).__name__}.")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError("model has no tokenizer; pass tokenizer= (the folder needs one to be loadable).")
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        raise FileExistsError(f"{path} is a file; choose a folder path.")
    if os.path.isdir(path) and holds_files(path) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; choose a new path or pass overwrite=True.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    config = model.config
    max_seq_length = max_seq_length or default_max_length(tokenizer, config)
    if config.normalize_embeddings:  # a Normalize module would run before sentence-transformers cuts the prefix
        warnings.warn("the model normalises each prefix after cutting it (normalize_embeddings=True); the exported "
                      "folder returns the raw prefix, as sentence-transformers cuts after its modules: pass "
                      "normalize_embeddings=True to SentenceTransformer.encode for the same vectors.", stacklevel=2)

    with tempfile.TemporaryDirectory(dir=parent, prefix=".mrl_export_") as work, \
            owned_files(path, "sentence-transformers") as st_dir:
        bert_dir = os.path.join(work, "bert")
        # With the (unused) pooler, so that AutoModel reports no missing weights when sentence-transformers loads it.
        plain = BertModel(plain_bert_config(config), add_pooling_layer=True)
        missing, unexpected = plain.load_state_dict(model.bert.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("pooler.") for k in missing), (missing, unexpected)
        plain.save_pretrained(bert_dir)
        right_padding(tokenizer).save_pretrained(bert_dir)

        modules = [Transformer(bert_dir, max_seq_length=max_seq_length),
                   Pooling(config.hidden_size, pooling_mode=config.pooling)]
        if model.projection is not None:
            proj = model.projection
            modules.append(Dense(proj.in_features, proj.out_features, bias=proj.bias is not None,
                                 activation_function=None, init_weight=proj.weight.detach().clone(),
                                 init_bias=None if proj.bias is None else proj.bias.detach().clone()))
        custom = False
        if model.adaptor is not None:
            adaptor_modules, custom = _adaptor_modules(model.adaptor)
            modules += adaptor_modules
        with torch.no_grad():
            SentenceTransformer(modules=modules, device="cpu", prompts=config.prompts,
                                default_prompt_name=config.default_prompt_name,
                                **sentence_transformers_keys(config)).save(str(st_dir))
        if custom:  # the module's class is in a file of the folder, so loading needs no mrl_hf
            from . import st_adaptor

            shutil.copyfile(st_adaptor.__file__, st_dir / ADAPTOR_MODULE_FILE)
            _point_at_module_file(st_dir / "modules.json")
            for router_config in st_dir.glob("*_Router/router_config.json"):
                _point_at_module_file(router_config)
    return path


def _point_at_module_file(path) -> None:
    """Rewrite the adaptor module's type in a sentence-transformers ``modules.json`` (a list of entries) or
    ``router_config.json`` (``{"types": {...}}``) to the class in the folder's own ``mrl_adaptor.py``."""
    content = json.loads(path.read_text())
    name = "mrl_adaptor.MatryoshkaAdaptorModule"
    if isinstance(content, list):
        for entry in content:
            if entry["type"].endswith(".MatryoshkaAdaptorModule"):
                entry["type"] = name
    else:
        types = content.get("types", {})
        for key, value in types.items():
            if value.endswith(".MatryoshkaAdaptorModule"):
                types[key] = name
    path.write_text(json.dumps(content, indent=2))
