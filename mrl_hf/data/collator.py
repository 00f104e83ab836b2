"""Batching (anchor, positive[, negative]) text pairs for nested contrastive fine-tuning."""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

ROLES = ("anchor", "positive", "negative")


class PairCollator:
    """Tokenize a list of pairs into the inputs ``MRLBertModel.forward`` takes for its contrastive loss.

    Each feature is a mapping with ``"anchor"`` and ``"positive"`` strings (and optionally ``"negative"``, in
    every feature or none), or a tuple ``(anchor, positive[, negative])``. Returns ``input_ids`` /
    ``attention_mask`` for anchors and ``positive_*`` / ``negative_*`` for the rest; every other positive and
    negative in the batch serves as an in-batch negative.
    """

    def __init__(self, tokenizer, max_length: int = 128):
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
            raise ValueError(f"max_length={max_length!r} must be an int >= 1.")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, features: Sequence[Any]) -> dict:
        if len(features) == 0:
            raise ValueError("PairCollator got an empty batch.")
        rows = [self._row(f, i) for i, f in enumerate(features)]
        has_negative = {len(r) == 3 for r in rows}
        if len(has_negative) > 1:
            raise ValueError("some pairs have a 'negative' and some do not; give one to every pair or to none.")
        batch = {}
        for j, role in enumerate(ROLES[: len(rows[0])]):
            enc = self.tokenizer([r[j] for r in rows], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False,
                                 padding_side="right")  # as encode pads: BERT counts left pads as positions
            prefix = "" if role == "anchor" else f"{role}_"
            batch[f"{prefix}input_ids"] = enc["input_ids"]
            batch[f"{prefix}attention_mask"] = enc["attention_mask"]
        return batch

    @staticmethod
    def _row(feature, index: int) -> tuple[str, ...]:
        if isinstance(feature, Mapping):
            missing = [k for k in ROLES[:2] if k not in feature]
            if missing:
                raise ValueError(f"pair {index} has keys {sorted(feature)}; it needs 'anchor' and 'positive' "
                                 "(and optionally 'negative').")
            if any(feature[k] is None for k in ROLES[:2]):  # only the negative may be absent
                raise ValueError(f"pair {index} has anchor {feature['anchor']!r:.50} and positive "
                                 f"{feature['positive']!r:.50}; both must be texts.")
            row = tuple(feature[k] for k in ROLES if feature.get(k) is not None)
        else:
            row = tuple(feature)
        if len(row) not in (2, 3):
            raise ValueError(f"pair {index} has {len(row)} texts; give (anchor, positive[, negative]).")
        for text in row:
            if not isinstance(text, str):
                raise TypeError(f"pair {index} contains {type(text).__name__} {text!r:.50}; texts must be str.")
        return row
