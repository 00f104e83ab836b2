"""Image-text evaluation per Matryoshka dim: zero-shot classification from class-name prompts and
image <-> text retrieval hit@k.

Every function slices the full embeddings to each size m and L2-normalises the prefix (Matryoshka order),
so one encoding pass evaluates all sizes. Accuracies and recalls are percentages.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..embeddings import _check_finite, truncate_embeddings
from ..nesting import validate_dims
from .pairs import pair_retrieval_metrics
from .retrieval_metrics import as_labels

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.")


def _as_float_tensor(x, name: str, ndim: Sequence[int] = (2,)) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}.")
    if x.dim() not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, got shape {tuple(x.shape)}.")
    x = x.detach().float().cpu()
    _check_finite(x.reshape(len(x), -1), name)  # argmax of a NaN row would pick class 0
    return x


def _tokenizer_of(model, tokenizer):
    if tokenizer is not None:
        return getattr(tokenizer, "tokenizer", tokenizer)  # a processor works too
    processor = getattr(model, "processor", None)
    if processor is None:
        raise ValueError("no tokenizer: pass tokenizer= (or a processor), or set model.processor.")
    return processor.tokenizer


# ---- encoding ------------------------------------------------------------------------------------------------

@torch.no_grad()
def embed_texts(model, texts: Sequence[str], tokenizer=None, batch_size: int = 256, max_length: int = 64) -> torch.Tensor:
    """Full text embeddings ``(len(texts), projection_dim)`` of an ``MRLAlignModel`` (eval mode, not normalised)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings.")
    tokenizer = _tokenizer_of(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt", padding_side="right")  # as encode pads (BERT counts left pads)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            chunks.append(model.get_text_features(**enc, truncate_dim=model.config.projection_dim,
                                                  normalize=False).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def embed_images(model, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Full image embeddings ``(N, projection_dim)`` of an ``MRLAlignModel`` (eval mode, not normalised)."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model.get_image_features(pixel_values[i:i + batch_size].to(model.device),
                                           truncate_dim=model.config.projection_dim, normalize=False).float().cpu()
                  for i in range(0, len(pixel_values), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def class_prompt_embeddings(model, class_names: Sequence[str], tokenizer=None,
                            templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256) -> torch.Tensor:
    """Embeddings ``(num_classes, num_templates, d)`` of every class name in every template (``"a photo of a {}."``)."""
    if not class_names:
        raise ValueError("class_names is empty; give one name per class, in label order.")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates={list(templates)!r}: give at least one, each with a '{{}}' for the class name.")
    prompts = [t.format(name) for name in class_names for t in templates]
    return embed_texts(model, prompts, tokenizer, batch_size).view(len(class_names), len(templates), -1)


# ---- metrics -------------------------------------------------------------------------------------------------

def zero_shot_accuracy(image_embeds, labels, class_embeds, dims: Sequence[int]) -> dict[int, float]:
    """Zero-shot top-1 accuracy (%) at each size in ``dims``.

    ``class_embeds`` is ``(num_classes, d)`` or ``(num_classes, num_templates, d)``; with templates, the class
    vector at size m is the mean of the templates' normalised m-prefixes, normalised again (CLIP's prompt
    ensembling, done per size). Each image goes to the class of highest cosine similarity.
    """
    images = _as_float_tensor(image_embeds, "image_embeds")
    classes = _as_float_tensor(class_embeds, "class_embeds", ndim=(2, 3))
    if classes.dim() == 2:
        classes = classes[:, None]
    if classes.shape[-1] != images.shape[1]:
        raise ValueError(f"class_embeds have size {classes.shape[-1]} but image_embeds {images.shape[1]}; "
                         "embed both with the same model.")
    labels = torch.from_numpy(as_labels(labels, "labels", n=images.shape[0], class_ids=True))  # 0.7 is no class
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes.shape[0]):
        raise ValueError(f"labels must be in 0..{classes.shape[0] - 1} (one class embedding per class), "
                         f"got {int(labels.min())}..{int(labels.max())}.")
    results = {}
    for m in validate_dims(dims, images.shape[1]):
        prototypes = truncate_embeddings(truncate_embeddings(classes, m, normalize=True).mean(1), None, normalize=True)
        pred = (truncate_embeddings(images, m, normalize=True) @ prototypes.T).argmax(1)
        results[m] = 100.0 * float((pred == labels).float().mean())
    return results


def image_text_retrieval(image_embeds, text_embeds, dims: Sequence[int], ks: Sequence[int] = (1, 5, 10),
                         image_labels=None, text_labels=None) -> dict[int, dict[str, float]]:
    """Image -> text and text -> image hit@k (%) at each size in ``dims``:
    ``{m: {"i2t_hit@1": .., "t2i_hit@1": .., ...}}``.

    Without labels, image i and text i are a pair and the only relevant item for each other (COCO/Flickr style;
    needs as many texts as images). With ``image_labels`` and ``text_labels``, every item of the same label is
    relevant (for captions built from class names, where many captions are identical).
    """
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks={tuple(ks)!r}: every k must be an int >= 1.")
    images = _as_float_tensor(image_embeds, "image_embeds")
    texts = _as_float_tensor(text_embeds, "text_embeds")
    if (image_labels is None) != (text_labels is None):
        raise ValueError("give both image_labels and text_labels, or neither (then image i pairs with text i).")
    if image_labels is None:
        if images.shape[0] != texts.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {texts.shape[0]} texts: without labels row i of each is "
                             "a pair, so the counts must match (or pass image_labels and text_labels).")
        i2t_relevant = t2i_relevant = None
    else:
        image_labels, text_labels = np.asarray(image_labels).reshape(-1), np.asarray(text_labels).reshape(-1)
        if len(image_labels) != images.shape[0] or len(text_labels) != texts.shape[0]:
            raise ValueError(f"got {len(image_labels)} image labels for {images.shape[0]} images and "
                             f"{len(text_labels)} text labels for {texts.shape[0]} texts; give one label per row.")
        i2t_relevant = [np.flatnonzero(text_labels == y) for y in image_labels]
        t2i_relevant = [np.flatnonzero(image_labels == y) for y in text_labels]
        for side, relevant, labels, other in (("image", i2t_relevant, image_labels, "text"),
                                              ("text", t2i_relevant, text_labels, "image")):
            alone = [i for i, r in enumerate(relevant) if len(r) == 0]
            if alone:
                raise ValueError(f"{side} {alone[0]}'s label {labels[alone[0]].item()!r} has no {other} ({len(alone)} "
                                 f"{side}(s) in all); every label needs at least one {other}, or drop those rows.")
    dims = validate_dims(dims, images.shape[1])
    i2t = pair_retrieval_metrics(images, texts, dims, i2t_relevant, ks)
    t2i = pair_retrieval_metrics(texts, images, dims, t2i_relevant, ks)
    return {m: {**{f"i2t_hit@{k}": 100.0 * i2t[m][f"hit@{k}"] for k in ks},
                **{f"t2i_hit@{k}": 100.0 * t2i[m][f"hit@{k}"] for k in ks}} for m in dims}


def zero_shot_classification_per_dim(model, pixel_values: torch.Tensor, labels, class_names: Sequence[str],
                                     tokenizer=None, templates: Sequence[str] = DEFAULT_TEMPLATES,
                                     dims: Sequence[int] | None = None, batch_size: int = 256) -> dict[int, float]:
    """Encode images and class prompts with an ``MRLAlignModel`` and return ``zero_shot_accuracy`` per dim
    (default dims: ``model.config.nesting_list``)."""
    class_embeds = class_prompt_embeddings(model, class_names, tokenizer, templates, batch_size)
    image_embeds = embed_images(model, pixel_values, batch_size)
    dims = dims if dims is not None else model.config.nesting_list
    return zero_shot_accuracy(image_embeds, labels, class_embeds, dims)
