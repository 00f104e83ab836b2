"""Retrieval over Matryoshka embeddings: exact, adaptive and funnel search, with FAISS or pure torch."""
from .cost import SearchCost, SearchResult, StageCost
from .index import MatryoshkaIndex, default_funnel_steps

__all__ = ["MatryoshkaIndex", "SearchCost", "SearchResult", "StageCost", "default_funnel_steps"]
