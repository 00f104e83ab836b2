"""``encode``, ``encode_query`` and ``encode_document`` of the text embedding models (``MRLBertModel``,
``MRLModelForTextEmbedding``), as sentence-transformers has them: prompts, sizes, normalisation and codes."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..adaptor import check_task
from ..embeddings import truncate_embeddings
from ..nesting import validate_dim
from ..quantization import check_code_precision, quantize_embeddings, warn_if_untrained
from .text_common import check_texts, default_max_length, resolve_prompt


class TextEncodeMixin:
    """For a ``PreTrainedModel`` with ``config`` (a Matryoshka text config), ``tokenizer`` and a ``forward`` that
    returns ``truncated_embeddings``; ``_embed_batch`` runs one tokenised batch."""

    def _truncate(self, embeddings, truncate_dim, normalize):
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        return truncate_embeddings(embeddings, dim, normalize=normalize)

    def _embed_batch(self, inputs: dict, truncate_dim, normalize, task) -> torch.Tensor:
        return self(**inputs, truncate_dim=truncate_dim, normalize=normalize).truncated_embeddings

    @torch.no_grad()
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        truncate_dim: int | None = None,
        normalize: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool = False,
        max_length: int | None = None,
        tokenizer=None,
        precision: str = "float32",
        ranges=None,
        calibration_embeddings=None,
        task: str | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ):
        """Embed ``texts`` like ``SentenceTransformer.encode``: returns ``(len(texts), dim)`` (or ``(dim,)`` for
        one string) as numpy, or a tensor with ``convert_to_tensor=True`` / ``convert_to_numpy=False``.

        ``truncate_dim`` defaults to ``config.truncate_dim`` (``None`` = full); ``normalize`` to
        ``config.normalize_embeddings``; normalisation happens after truncation.

        ``task`` (``"query"`` / ``"document"``, as ``encode_query`` / ``encode_document``), ``prompt_name`` and
        ``prompt`` choose the text put before each input as sentence-transformers does (``config.prompts``).
        ``task="query"`` also embeds queries with an asymmetric adaptor's query map where the model has one
        (``MRLBertModel``); ``None`` and ``"document"`` embed documents.

        ``precision`` ``"int8"``, ``"uint8"``, ``"binary"`` or ``"ubinary"`` returns the codes of the (truncated,
        normalised) embeddings exactly as sentence-transformers' ``quantize_embeddings`` makes them (``ranges`` /
        ``calibration_embeddings`` set the int8 levels; by default the texts themselves calibrate them), so its
        search helpers and vector engines take them; a size / precision the model was not trained for
        (``config.matryoshka_precisions``) gives a warning naming it. ``max_length`` defaults to the
        tokenizer's ``model_max_length`` capped at the backbone's ``max_position_embeddings``. Texts are padded on
        the right whatever the tokenizer's ``padding_side``: backbones with absolute positions (BERT, GPT-2) count
        left padding as positions, and every pooling mode reads the attention mask.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else texts
        check_texts(texts)
        prefix = resolve_prompt(self.config, check_task(task), prompt_name, prompt)
        texts = [prefix + text for text in texts] if prefix else texts
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("This model has no tokenizer: load it with from_pretrained from a folder that has one, "
                             "set model.tokenizer = AutoTokenizer.from_pretrained(...), or pass tokenizer=.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        check_code_precision(precision)
        warn_if_untrained(self.config.matryoshka_precisions, dim or self.config.matryoshka_embedding_dim, precision)
        max_length = max_length or default_max_length(tokenizer, self.config)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch
        was_training = self.training
        self.eval()
        chunks = []
        try:
            from tqdm.auto import trange

            for start in trange(0, len(texts), batch_size, desc="Batches", disable=not show_progress_bar):
                batch = [texts[i] for i in order[start:start + batch_size]]
                enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                                padding_side="right")  # positions from 0 on every backbone (BERT, GPT-2 count pads)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                chunks.append(self._embed_batch(enc, dim, normalize, task))
        finally:
            self.train(was_training)
        out = torch.empty_like(torch.cat(chunks))
        out[torch.as_tensor(order, device=out.device)] = torch.cat(chunks)
        if precision != "float32":  # codes, as sentence-transformers quantises the whole output
            out = torch.from_numpy(quantize_embeddings(out, precision, ranges, calibration_embeddings))
        if single:
            out = out[0]
        if convert_to_tensor or not convert_to_numpy:
            return out
        return (out.float() if out.is_floating_point() else out).cpu().numpy()

    def encode_query(self, texts, **kwargs):
        """``encode(texts, task="query", ...)``, as sentence-transformers' ``encode_query``."""
        return self.encode(texts, task="query", **kwargs)

    def encode_document(self, texts, **kwargs):
        """``encode(texts, task="document", ...)``, as sentence-transformers' ``encode_document``."""
        return self.encode(texts, task="document", **kwargs)
