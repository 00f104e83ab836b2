"""MatryoshkaHead: the paper's MRL linear layer (Algorithm 2), with a fused MRL-E path."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .losses import NestedLoss, nested_linear_cross_entropy, MatryoshkaCrossEntropyLoss
from .nesting import validate_dim, validate_nesting_list


class MatryoshkaHead(nn.Module):
    """Linear classifiers on every prefix ``z[:m]`` of an embedding, for ``m`` in ``nesting_list``.

    MRL (``efficient=False``): one ``Linear(m, num_classes)`` per ``m``, kept in ``classifiers``.
    MRL-E (``efficient=True``): one shared ``weight`` of shape ``(num_classes, d)``; the logits at ``m`` use
    ``weight[:, :m]``. They are computed from block products ``z[:, a:b] @ weight[:, a:b].T`` over
    consecutive nesting boundaries and their prefix sums, so all |M| logits cost one matmul's FLOPs.
    MRL-E's ``weight`` can be tied to another parameter (e.g. word embeddings) by assignment.
    """

    def __init__(self, nesting_list: Sequence[int], num_classes: int, efficient: bool = False, bias: bool = True):
        super().__init__()
        self.nesting_list = validate_nesting_list(nesting_list)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        num_classes = int(num_classes)  # numpy ints too (e.g. labels.max() + 1)
        self.in_features = self.nesting_list[-1]
        self.efficient = bool(efficient)
        if self.efficient:
            shared = nn.Linear(self.in_features, num_classes, bias=bias)
            self.weight = shared.weight
            self.bias = shared.bias
        else:
            self.classifiers = nn.ModuleList(nn.Linear(m, num_classes, bias=bias) for m in self.nesting_list)

    @property
    def num_classes(self) -> int:
        """Read from the weights, so it follows ``resize_token_embeddings`` of a tied MLM decoder."""
        return self.weight.shape[0] if self.efficient else self.classifiers[0].out_features

    def extra_repr(self) -> str:
        kind = "MRL-E" if self.efficient else "MRL"
        return f"{kind}, nesting_list={self.nesting_list}, num_classes={self.num_classes}"

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        if hidden.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden has last dim {hidden.shape[-1]}, but this head expects {self.in_features} "
                f"(the last entry of nesting_list={self.nesting_list})."
            )

    def forward(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        dim: int | None = None,
        loss_fct: MatryoshkaCrossEntropyLoss | None = None,
        return_predictions: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...] | torch.Tensor | NestedLoss:
        """Everything the head computes goes through here (``head(...)``), so module hooks see it: DeepSpeed
        ZeRO-3 gathers ``weight`` in a forward pre-hook, accelerate's device-map hooks move it.

        - ``head(hidden)``: logits for every nesting dim, a tuple of |M| tensors ``(..., num_classes)``.
        - ``head(hidden, dim=m)``: logits at one size only (``logits_at``).
        - ``head(hidden, labels)``: the nested cross-entropy (``loss``), a ``NestedLoss``.
        """
        self._check_hidden(hidden)
        if labels is not None:
            return self._nested_loss(hidden, labels, loss_fct, return_predictions, num_items_in_batch)
        if dim is not None:
            return self._logits_at(hidden, dim)
        if not self.efficient:
            return tuple(clf(hidden[..., :m]) for m, clf in zip(self.nesting_list, self.classifiers))
        lead = hidden.shape[:-1]
        flat = hidden.reshape(-1, self.in_features)
        bounds = [0, *self.nesting_list]
        blocks = torch.stack(
            [flat[:, a:b] @ self.weight[:, a:b].T for a, b in zip(bounds, bounds[1:])]
        )
        logits = blocks.cumsum(0)
        if self.bias is not None:
            logits = logits + self.bias
        return tuple(x.reshape(*lead, self.num_classes) for x in logits.unbind(0))

    def logits_at(self, hidden: torch.Tensor, dim: int) -> torch.Tensor:
        """Logits at one size only. MRL-E accepts any ``dim`` in 1..d; MRL only the sizes it has heads for."""
        return self(hidden, dim=dim)

    def loss(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        loss_fct: MatryoshkaCrossEntropyLoss | None = None,
        return_predictions: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> NestedLoss:
        """Nested cross-entropy of this head on ``hidden`` without keeping |M| logit tensors for MRL-E.

        MRL-E goes through ``nested_linear_cross_entropy`` (chunked, gradients formed in the forward pass),
        which keeps memory near a single ``Linear`` + cross-entropy even for a 30k-word vocabulary.
        ``num_items_in_batch``: divide the summed loss by it (see ``MatryoshkaCrossEntropyLoss``).
        """
        return self(hidden, labels, loss_fct=loss_fct, return_predictions=return_predictions,
                    num_items_in_batch=num_items_in_batch)

    def _logits_at(self, hidden: torch.Tensor, dim: int) -> torch.Tensor:
        if self.efficient:
            validate_dim(dim, self.in_features, name="dim")
            return nn.functional.linear(hidden[..., :dim], self.weight[:, :dim], self.bias)
        if dim not in self.nesting_list:
            raise ValueError(
                f"dim={dim} has no classifier in this MRL head; choose one of {self.nesting_list} "
                "(or use efficient=True, whose shared weight serves any dim)."
            )
        return self.classifiers[self.nesting_list.index(dim)](hidden[..., :dim])

    def _nested_loss(self, hidden, labels, loss_fct, return_predictions, num_items_in_batch) -> NestedLoss:
        loss_fct = loss_fct if loss_fct is not None else MatryoshkaCrossEntropyLoss()
        if self.efficient:
            return nested_linear_cross_entropy(
                hidden.reshape(-1, self.in_features),
                self.weight,
                self.bias,
                labels.reshape(-1),
                self.nesting_list,
                relative_importance=loss_fct.relative_importance,
                ignore_index=loss_fct.ignore_index,
                label_smoothing=loss_fct.label_smoothing,
                return_predictions=return_predictions,
                num_items_in_batch=num_items_in_batch,
            )
        logits = self(hidden)
        out = loss_fct(logits, labels, num_items_in_batch=num_items_in_batch)
        if return_predictions:
            preds = torch.stack([x.detach().reshape(-1, self.num_classes).argmax(-1) for x in logits])
            out = out._replace(predictions=preds)
        return out


def refuse_precisions(config) -> None:
    """A classifier trains logits with the nested cross-entropy: a ``precisions`` setting would be recorded as trained
    codes that nothing trained."""
    if config.precisions is not None:
        raise ValueError(f"precisions={config.precisions!r}: quantisation-aware training is for embedding models (the "
                         "nested InfoNCE and the distillation losses); a classifier is trained on its logits only. "
                         "Leave precisions unset.")
