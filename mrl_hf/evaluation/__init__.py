"""Evaluation of Matryoshka embeddings per dim."""
from .retrieval_metrics import (
    average_precision_at_k,
    evaluate_retrieval_per_dim,
    mean_average_precision_at_k,
    precision_at_k,
    nn_recall_at_k,
    relevance,
    retrieval_metrics,
    top1_accuracy,
    tie_aware_overlap,
    top_k_overlap,
)
from .classification import (  # noqa: E402
    baseline_features,
    encode_images,
    evaluate_baselines,
    evaluate_embeddings,
    knn_accuracy,
    linear_probe_accuracy,
    nearest_class_mean_accuracy,
    oracle_accuracy,
    per_dim_accuracy,
)
from .table import ResultsTable  # noqa: E402
from .zero_shot import (  # noqa: E402
    DEFAULT_TEMPLATES,
    class_prompt_embeddings,
    embed_images,
    embed_texts,
    image_text_retrieval,
    zero_shot_accuracy,
    zero_shot_classification_per_dim,
)
from .pairs import format_table as format_pair_table, group_pairs, pair_retrieval_metrics  # noqa: E402,F401
