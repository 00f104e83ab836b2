"""Freezing the bottom of a pretrained encoder for fine-tuning: its embedding layer and its first transformer blocks.

A small in-domain fine-tune has little to teach the bottom of an encoder, and for a small model that bottom is much
of the cost of a step: all-MiniLM-L6-v2's word embeddings are half of its 22.7M parameters, and their dense
gradient, clipping and AdamW update are paid at every step; a frozen block is left out of the backward pass. Frozen
parameters keep their values exactly (``transformers.Trainer`` optimises only parameters that require a gradient).
What it buys and costs on the demo recipe is measured in docs/finetune.md.
"""
from __future__ import annotations

from torch import nn


def freeze_bottom(model: nn.Module, blocks: int = 0) -> list[str]:
    """Freeze ``model``'s embedding layer (word, position and token-type embeddings and their norm; for a decoder
    without an ``embeddings`` module, such as GPT-2, its token and learned position tables) and its first ``blocks``
    transformer blocks (``requires_grad=False``); returns the names of the parameters frozen.

    Works on a model whose ``base_model`` (the transformers encoder it wraps: ``MRLBertModel.bert``,
    ``MRLModelForTextEmbedding.backbone``, ...) has an ``embeddings`` module or input embeddings, and, for
    ``blocks > 0``, one list of ``config.num_hidden_layers`` blocks. A masked-LM model's decoder is tied to the word
    embeddings and freezes with them."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"blocks={blocks!r} must be a whole number >= 0 (0 freezes the embedding layer only).")
    base = model  # down to the encoder: MRLModelForMaskedLM's base_model is a ...ForMaskedLM whose own is the encoder
    while getattr(base, "base_model", base) is not base:
        base = base.base_model
    embeddings = getattr(base, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        try:
            embeddings = base.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # transformers raises the latter where it finds none
            embeddings = None
    if not isinstance(embeddings, nn.Module):
        raise ValueError(f"{type(model).__name__} has no single encoder with an embedding layer to freeze (a dual "
                         "encoder has one per tower: call requires_grad_(False) on the parts you want frozen).")
    frozen = [embeddings]
    if embeddings is not getattr(base, "embeddings", None):  # a decoder's own tables (GPT-2: wte and wpe; OPT)
        frozen += [m for m in base.children() if isinstance(m, nn.Embedding) and m is not embeddings]
    if blocks:
        stack = _blocks(base)
        if stack is None:
            raise ValueError(f"could not find the transformer blocks of {type(base).__name__} (a list of "
                             "config.num_hidden_layers modules); use blocks=0 or freeze them with "
                             "requires_grad_(False).")
        if blocks > len(stack):
            raise ValueError(f"blocks={blocks}, but {type(base).__name__} has only {len(stack)}; give at most "
                             f"{len(stack)}.")
        frozen += list(stack[:blocks])
    ids = {id(p) for module in frozen for p in module.parameters()}
    names = [name for name, p in model.named_parameters() if id(p) in ids]
    for module in frozen:
        module.requires_grad_(False)
    return names


def _blocks(base: nn.Module) -> nn.ModuleList | None:
    count = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and count and len(module) == count:
            return module
    return None
