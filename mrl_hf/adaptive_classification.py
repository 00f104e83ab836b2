"""Adaptive classification with a Matryoshka model: the paper's cascade of nested classifiers (Appendix D.1).

An input is classified at the smallest dim whose max-softmax confidence reaches that dim's threshold; the
largest dim always answers. Thresholds are learned on held-out data by a grid search over [0, 1] and ``inf``
(never answer at that dim: a head that is sure and wrong can reach a confidence of exactly 1), keeping the
smallest threshold that gives the best accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .embeddings import _check_finite_nested_logits
from .evaluation.retrieval_metrics import as_labels
from .nesting import validate_nesting_list


@dataclass
class AdaptiveResult:
    """``accuracy`` (%) of the cascade; ``expected_dim``: mean size of the representation that answered;
    ``expected_cost``: mean number of embedding features multiplied by the heads evaluated (MRL evaluates
    every head up to the answering one, 8+16+...; MRL-E reuses the shared weight's prefix, so it costs
    the answering dim); ``full_dim_accuracy`` (%) of the largest head alone; ``dim_fractions``: share of inputs
    answered at each dim."""

    accuracy: float
    expected_dim: float
    expected_cost: float
    full_dim_accuracy: float
    dim_fractions: dict[int, float] = field(default_factory=dict)


class AdaptiveClassifier:
    """The paper's threshold cascade over the nested classifiers of one MRL or MRL-E model.

    >>> clf = AdaptiveClassifier(model.config.nesting_list, efficient=model.config.efficient)
    >>> clf.fit(heldout_logits, heldout_labels)        # logits: (|M|, N, C) or a tuple of |M| (N, C)
    >>> clf.evaluate(test_logits, test_labels).expected_dim

    Thresholds are learned from the largest dim down: the threshold at dim i is the smallest grid value that
    maximises the held-out accuracy of the cascade that starts at i (inputs below it are passed on to the
    already-learned cascade from i+1).
    """

    def __init__(self, nesting_list: Sequence[int], efficient: bool = False, num_thresholds: int = 101):
        self.nesting_list = validate_nesting_list(nesting_list)
        self.efficient = bool(efficient)
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds < 2:
            raise ValueError(f"num_thresholds={num_thresholds!r} must be an int >= 2 (grid points over [0, 1]).")
        self.grid = np.append(np.linspace(0.0, 1.0, num_thresholds), np.inf)  # inf: skip this dim
        self.thresholds: np.ndarray | None = None  # one per dim; the last is 0 (always answers)
        self.num_classes: int | None = None  # of the logits the thresholds were fitted on

    @classmethod
    def from_model(cls, model, **kwargs) -> "AdaptiveClassifier":
        return cls(model.config.nesting_list, efficient=model.config.efficient, **kwargs)

    def _confidences(self, nested_logits) -> tuple[np.ndarray, np.ndarray, int]:
        """(|M|, N) max-softmax probabilities and argmax predictions, and the number of classes."""
        if isinstance(nested_logits, (list, tuple)):
            nested_logits = torch.stack([torch.as_tensor(x) for x in nested_logits])
        logits = torch.as_tensor(nested_logits).detach().cpu()
        if logits.dim() != 3 or logits.shape[0] != len(self.nesting_list):
            raise ValueError(f"nested_logits must have shape (|M|={len(self.nesting_list)}, N, num_classes) "
                             f"(or be a tuple of |M| (N, num_classes) tensors), got {tuple(logits.shape)}.")
        _check_finite_nested_logits(logits)
        conf, pred = [], []
        for dim_logits in logits:  # one size at a time in float64: fewer confidences round to 1, bounded memory
            x = dim_logits.double()
            conf.append(1.0 / (x - x.max(-1, keepdim=True).values).exp().sum(-1))  # the max softmax probability
            pred.append(x.argmax(-1))
        return torch.stack(conf).numpy(), torch.stack(pred).numpy(), logits.shape[-1]

    @staticmethod
    def _labels(labels, n: int, classes: int) -> np.ndarray:  # class indices: string labels never match a class
        return as_labels(labels, "labels", n=n, class_ids=True, num_classes=classes)

    def fit(self, nested_logits, labels) -> "AdaptiveClassifier":
        conf, pred, self.num_classes = self._confidences(nested_logits)
        correct = pred == self._labels(labels, conf.shape[1], self.num_classes)[None]
        num_dims = len(self.nesting_list)
        thresholds = np.zeros(num_dims)
        downstream = correct[-1].copy()  # correctness of the cascade that starts at the next dim
        for i in range(num_dims - 2, -1, -1):
            passes = conf[i][None, :] >= self.grid[:, None]  # (grid, N)
            accuracy = np.where(passes, correct[i][None], downstream[None]).mean(1)
            best = int(np.flatnonzero(accuracy >= accuracy.max() - 1e-12)[0])  # smallest threshold with the best
            thresholds[i] = self.grid[best]
            downstream = np.where(passes[best], correct[i], downstream)
        self.thresholds = thresholds
        return self

    def _route(self, conf: np.ndarray) -> np.ndarray:
        if self.thresholds is None:
            raise RuntimeError("AdaptiveClassifier is not fitted; call fit(heldout_logits, heldout_labels) first.")
        passes = conf >= self.thresholds[:, None]
        passes[-1] = True
        return passes.argmax(0)  # index of the first dim that answers

    def _check_classes(self, classes: int) -> None:
        fitted = getattr(self, "num_classes", None)  # None: not fitted, or pickled before it was recorded
        if fitted is not None and classes != fitted:
            raise ValueError(f"nested_logits have {classes} classes, but the thresholds were fitted on logits of "
                             f"{fitted}; use the classifier the thresholds were fitted for.")

    def predict(self, nested_logits) -> tuple[np.ndarray, np.ndarray]:
        """``(predictions, dims)``: the class and the representation size that answered, per input."""
        conf, pred, classes = self._confidences(nested_logits)
        self._check_classes(classes)
        stop = self._route(conf)
        return pred[stop, np.arange(len(stop))], np.asarray(self.nesting_list)[stop]

    def evaluate(self, nested_logits, labels) -> AdaptiveResult:
        conf, pred, classes = self._confidences(nested_logits)
        self._check_classes(classes)
        labels = self._labels(labels, conf.shape[1], classes)
        stop = self._route(conf)
        dims = np.asarray(self.nesting_list)
        cost_per_stop = dims if self.efficient else np.cumsum(dims)
        answered = pred[stop, np.arange(len(stop))]
        return AdaptiveResult(
            accuracy=100.0 * float((answered == labels).mean()),
            expected_dim=float(dims[stop].mean()),
            expected_cost=float(cost_per_stop[stop].mean()),
            full_dim_accuracy=100.0 * float((pred[-1] == labels).mean()),
            dim_fractions={int(m): float((stop == i).mean()) for i, m in enumerate(dims)},
        )
