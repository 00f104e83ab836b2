"""mrl_hf: Matryoshka Representation Learning for the Hugging Face ecosystem."""
from transformers import AutoConfig

from .config import MatryoshkaConfig, MatryoshkaConfigMixin
from .embeddings import truncate_embeddings
from .heads import MatryoshkaHead
from .losses import (
    MatryoshkaContrastiveLoss,
    MatryoshkaCrossEntropyLoss,
    NestedLoss,
    nested_contrastive_loss,
    nested_cosine_similarities,
    nested_linear_cross_entropy,
)
from .nesting import halving_nesting_list, interpolated_dims, uniform_nesting_list, validate_nesting_list

__version__ = "0.1.0"

AutoConfig.register(MatryoshkaConfig.model_type, MatryoshkaConfig, exist_ok=True)
