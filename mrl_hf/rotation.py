"""An orthogonal output rotation for Matryoshka fine-tuning that keeps the full-size geometry.

``add_output_rotation(model)`` puts a square projection after the pooling of an embedding model, the identity at
first; ``MRLTrainer(rotation_learning_rate=...)`` trains it with its own learning rate and, after every optimiser
step, replaces it by the nearest orthogonal matrix (the polar factor ``U V^T`` of its SVD). A rotation changes which
directions each prefix keeps, but not one cosine similarity of the full-size vectors: with the encoder frozen, the
full-size retrieval of any text is exactly the original's, and all the Matryoshka gain is in the prefixes. The
rotation is a plain ``nn.Linear`` (zero bias), saved, loaded and exported like any projection.
"""
from __future__ import annotations

import torch
from torch import nn


def add_output_rotation(model) -> nn.Linear:
    """Give ``model`` (an embedding model with a ``projection`` slot, e.g. ``MRLBertModel``) an identity
    ``projection`` of its hidden size, recorded in its config as ``embedding_dim``; returns it."""
    if not hasattr(model, "projection") or not hasattr(model.config, "embedding_dim"):
        raise ValueError(f"{type(model).__name__} has no projection after its pooling; an output rotation needs an "
                         "embedding model such as MRLBertModel.")
    if model.projection is not None:
        raise ValueError(f"the model already has a projection ({model.projection.in_features} -> "
                         f"{model.projection.out_features}); an output rotation replaces none. Load the encoder "
                         "without embedding_dim, then call add_output_rotation.")
    if getattr(model, "adaptor", None) is not None:
        raise ValueError("the model has an attached adaptor, which maps the embedding after the projection; add the "
                         "rotation to the model without it.")
    width = getattr(model.config, "hidden_size", None)
    if not isinstance(width, int):
        raise ValueError(f"{type(model).__name__}'s config has no hidden_size to size the rotation; use MRLBertModel.")
    weight = next(model.parameters())
    rotation = nn.Linear(width, width, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        rotation.weight.copy_(torch.eye(width))
        rotation.bias.zero_()
    rotation.bias.requires_grad_(False)  # a shift would change the cosines
    model.projection = rotation
    model.config.embedding_dim = width
    return rotation


def check_rotation(model) -> nn.Linear:
    """The model's projection if it is a rotation (square, orthogonal, zero bias), else a ValueError with the fix."""
    projection = getattr(model, "projection", None)
    fix = "call mrl_hf.add_output_rotation(model) on the model without a projection before building the trainer."
    if not isinstance(projection, nn.Linear) or projection.in_features != projection.out_features:
        raise ValueError(f"rotation_learning_rate needs a square projection after the pooling; {fix}")
    w = projection.weight.detach().float()
    identity = torch.eye(w.shape[0], device=w.device)
    # a rotation kept in bfloat16 / float16 is orthogonal up to its rounding (bf16: about 4e-3 after make_orthogonal)
    tolerance = max(1e-4, 4 * torch.finfo(projection.weight.dtype).eps)
    if not torch.allclose(w @ w.T, identity, atol=tolerance) or (projection.bias is not None and projection.bias.any()):
        raise ValueError(f"the model's projection is not a rotation (orthogonal, zero bias); {fix}")
    return projection


@torch.no_grad()
def make_orthogonal(linear: nn.Linear) -> None:
    """Replace ``linear.weight`` by its polar factor ``U V^T``, the nearest orthogonal matrix."""
    u, _, vh = torch.linalg.svd(linear.weight.to(torch.promote_types(linear.weight.dtype, torch.float32)))
    linear.weight.copy_(u @ vh)
