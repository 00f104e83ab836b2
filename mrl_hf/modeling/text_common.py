"""What the text embedding models share: finding the checkpoint's tokenizer, checking inputs, the encode length and
the files that make a saved folder a sentence-transformers model."""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import AutoTokenizer

from ..contract import sentence_transformers_keys

# Any one of these next to the weights means the checkpoint has a tokenizer.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def _has_tokenizer_files(path, hub: dict) -> bool:
    from transformers.utils.hub import cached_file

    for name in TOKENIZER_FILES:
        try:
            if cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub) is not None:
                return True
        except (OSError, ValueError):
            return False
    return False


def try_load_tokenizer(path, kwargs):
    """The tokenizer saved with the checkpoint, or None. transformers 5 gives a folder without tokenizer files a
    tokenizer with only the special tokens (every word becomes [UNK]), so the files are looked for first."""
    keep = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs}
    if not _has_tokenizer_files(path, keep):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code"), **keep)
    except (OSError, ValueError, TypeError, KeyError):  # unreadable: encode() will ask for one
        return None


def default_max_length(tokenizer, config) -> int:
    """The tokenizer's ``model_max_length``, capped at the backbone's ``max_position_embeddings`` (when it has one)."""
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    limit = getattr(tokenizer, "model_max_length", None) or positions or 512
    return int(min(limit, positions)) if positions else int(limit)


def sentence_transformers_files(config, max_seq_length: int) -> dict[str, object]:
    """The files that make a saved folder load in sentence-transformers (>= 6) as one Transformer module whose output
    is the model's ``embeddings`` (pooling and projection included)."""
    return {
        "modules.json": [{"idx": 0, "name": "0", "path": "",
                          "type": "sentence_transformers.base.modules.transformer.Transformer"}],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding", "max_seq_length": max_seq_length},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
            "default_prompt_name": None, **sentence_transformers_keys(config)},
    }


def check_nonempty(inputs) -> None:
    if inputs is None:
        raise ValueError("give input_ids (or inputs_embeds).")
    if isinstance(inputs, torch.Tensor) and (inputs.dim() < 2 or 0 in inputs.shape[:2]):
        raise ValueError(f"got input of shape {tuple(inputs.shape)}; expected (batch, seq_len) with batch >= 1 and "
                         "seq_len >= 1. Skip empty batches (e.g. dataloader_drop_last=True) and tokenize with "
                         "return_tensors='pt'.")


def check_texts(texts) -> None:
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}.")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one string.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.50}); every text must be a str.")
