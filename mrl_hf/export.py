"""Export an ``MRLBertModel`` as a sentence-transformers folder.

The folder holds a plain BERT (``model_type: bert``), a Pooling module and, when the model projects, a Dense
module with no activation: ``SentenceTransformer(path)`` loads it without mrl_hf installed. The Matryoshka
sizes are written into its ``config.json`` (``matryoshka_dimensions``) for readers, but sentence-transformers
does not apply ``truncate_dim`` from any file: pass ``SentenceTransformer(path, truncate_dim=64)``, and
``normalize_embeddings=True`` to ``encode`` to normalise after truncation (no Normalize module is saved,
because it would normalise *before* truncating).
"""
from __future__ import annotations

import os
import tempfile

import torch
from transformers import BertConfig, BertModel

from .config import MATRYOSHKA_KEYS
from .modeling.bert import MRLBertModel, default_max_length
from .saving import atomic_directory

_OWN_KEYS = {*MATRYOSHKA_KEYS, "pooling", "embedding_dim", "contrastive_temperature", "model_type",
             "architectures", "auto_map", "transformers_version"}


def export_sentence_transformers(model: MRLBertModel, path: str, tokenizer=None, max_seq_length: int | None = None,
                                 overwrite: bool = False) -> str:
    """Write ``model`` to ``path`` as a sentence-transformers model and return ``path``.

    The folder appears all at once (built next to it, then renamed); an existing non-empty ``path`` is
    replaced only with ``overwrite=True``. ``max_seq_length`` defaults to what ``model.encode`` uses.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    if not isinstance(model, MRLBertModel):
        raise TypeError(f"model must be an MRLBertModel, got {type(model).__name__}.")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError("model has no tokenizer; pass tokenizer= (the folder needs one to be loadable).")
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path) and not overwrite):
        raise FileExistsError(f"{path} exists and is not empty; choose a new path or pass overwrite=True.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    config = model.config
    max_seq_length = max_seq_length or default_max_length(tokenizer, config)

    with tempfile.TemporaryDirectory(dir=parent, prefix=".mrl_export_") as work, atomic_directory(path) as st_dir:
        bert_dir = os.path.join(work, "bert")
        plain_config = BertConfig(**{k: v for k, v in config.to_dict().items() if k not in _OWN_KEYS})
        plain_config.matryoshka_dimensions = list(config.nesting_list)
        # With the (unused) pooler, so that AutoModel reports no missing weights when sentence-transformers loads it.
        plain = BertModel(plain_config, add_pooling_layer=True)
        missing, unexpected = plain.load_state_dict(model.bert.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("pooler.") for k in missing), (missing, unexpected)
        plain.save_pretrained(bert_dir)
        tokenizer.save_pretrained(bert_dir)

        modules = [Transformer(bert_dir, max_seq_length=max_seq_length),
                   Pooling(config.hidden_size, pooling_mode=config.pooling)]
        if model.projection is not None:
            proj = model.projection
            modules.append(Dense(proj.in_features, proj.out_features, bias=proj.bias is not None,
                                 activation_function=None, init_weight=proj.weight.detach().clone(),
                                 init_bias=None if proj.bias is None else proj.bias.detach().clone()))
        with torch.no_grad():
            SentenceTransformer(modules=modules, device="cpu").save(str(st_dir))
    return path
