"""The Matryoshka fields every mrl_hf config carries (docs/contract.md says what each tool reads)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig

from .contract import contract_keys
from .nesting import halving_nesting_list, validate_dim, validate_nesting_list, validate_relative_importance
from .quantization import check_quantization_options, resolve_precisions

MATRYOSHKA_KEYS = (
    "nesting_list",
    "truncate_dim",
    "efficient",
    "relative_importance",
    "normalize_embeddings",
    "matryoshka_dimensions",
    "is_matryoshka",
    "precisions",
    "quantization_weight",
    "binary_surrogate",
    "matryoshka_precisions",
)


FULL_SIZE_WARNING = r"matryoshka_dimensions=.* does not list the embedding size"  # the start of the message below


def _with_full_size(sizes, full: int) -> list:
    """vLLM and Jina list the sizes a request may ask for; the full size needs no listing there, but ends a
    ``nesting_list``. It is added, with a warning, since the list's sizes then describe what mrl_hf trains."""
    sizes = list(sizes)
    numbers = [m for m in sizes if isinstance(m, int) and not isinstance(m, bool)]
    if len(numbers) == len(sizes) and numbers and max(numbers) < full:
        warnings.warn(f"matryoshka_dimensions={sizes} does not list the embedding size {full}; loading with "
                      f"nesting_list={sizes + [full]}. Pass nesting_list= to choose the sizes yourself.", stacklevel=4)
        sizes.append(full)
    return sizes


@dataclass(kw_only=True, repr=False)
class MatryoshkaConfigMixin:
    """Mix into a ``PretrainedConfig`` subclass (listed first) to add and validate the Matryoshka fields.

    The subclass says where its embedding size lives by overriding ``matryoshka_embedding_dim``.
    ``nesting_list=None`` means the sizes of ``matryoshka_dimensions`` when a checkpoint has only that key (vLLM,
    Jina), else the paper's halving list of that size. ``matryoshka_dimensions`` and ``is_matryoshka`` are derived
    from ``nesting_list`` and written for other tools (jina-style key, vLLM).

    Quantisation-aware training (``mrl_hf.quantization``): ``precisions`` lists the codes the prefixes are also
    trained for, ``["float32", "binary"]`` (every size) or ``{"binary": [12, 24]}`` (chosen sizes); ``None`` trains
    float32 only. ``quantization_weight`` weighs each quantised term against its float term, ``binary_surrogate``
    (``"ste"``, ``"tanh"`` or ``"ste-centred"``: the codes of batch-centred vectors, for serving with
    ``mean_centering``) is how the sign is differentiated. ``matryoshka_precisions`` is derived: the trained
    ``{precision: sizes}`` pairs, float32 at every size, written for serving code and the model card.

    Invalid values raise ``ValueError`` at construction (wrapped by ``@strict`` in
    ``StrictDataclassFieldValidationError``, a ``ValueError``) naming the key and the allowed range.
    """

    nesting_list: list[int] | None = None
    truncate_dim: int | None = None
    efficient: bool = False
    relative_importance: list[float | int] | None = None
    normalize_embeddings: bool = False
    matryoshka_dimensions: list[int] | None = None
    is_matryoshka: bool = True
    precisions: list[str] | dict[str, list[int]] | None = None
    quantization_weight: float | int = 1.0
    binary_surrogate: str = "ste"
    matryoshka_precisions: dict[str, list[int]] | None = None

    @property
    def matryoshka_embedding_dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must say which field holds the embedding size.")

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.nesting_list is None and self.matryoshka_dimensions:  # a checkpoint with only the vLLM / Jina key
            self.nesting_list = _with_full_size(self.matryoshka_dimensions, self.matryoshka_embedding_dim)
        if self.nesting_list is None:
            dim = self.matryoshka_embedding_dim
            self.nesting_list = halving_nesting_list(dim, min_dim=min(8, dim))
        self.validate_matryoshka()

    def validate_matryoshka(self) -> None:
        """Check every Matryoshka field against the embedding size; called at construction and by models."""
        dim = self.matryoshka_embedding_dim
        self.nesting_list = validate_nesting_list(self.nesting_list, dim=dim)
        if self.truncate_dim is not None:
            validate_dim(self.truncate_dim, dim, name="truncate_dim")
        if self.relative_importance is not None:
            self.relative_importance = validate_relative_importance(self.relative_importance, len(self.nesting_list))
        self.matryoshka_dimensions = list(self.nesting_list)
        self.is_matryoshka = True
        self.matryoshka_precisions = resolve_precisions(self.precisions, self.nesting_list)
        self.quantization_weight, self.binary_surrogate = check_quantization_options(self.quantization_weight,
                                                                                     self.binary_surrogate)

    def to_diff_dict(self) -> dict:
        # Always write the Matryoshka keys, even when equal to their defaults, so other tools can read them.
        out = super().to_diff_dict()
        for key in MATRYOSHKA_KEYS:
            out[key] = getattr(self, key)
        out.update(contract_keys(self))
        return out


@strict
class MatryoshkaConfig(MatryoshkaConfigMixin, PretrainedConfig):
    """A bare config for models that only need an embedding size and the Matryoshka fields."""

    model_type = "matryoshka"

    embedding_dim: int = 64

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim


AutoConfig.register(MatryoshkaConfig.model_type, MatryoshkaConfig, exist_ok=True)
