"""Retrieval over Matryoshka embeddings: exact, adaptive and funnel search, with FAISS or pure torch."""
from .cost import SearchCost, SearchResult, StageCost
from .index import MatryoshkaIndex, default_funnel_steps
from .plan import SearchPlan
from .tuner import NoPlanMeetsTarget, PlanReport, TuneResult

__all__ = ["MatryoshkaIndex", "NoPlanMeetsTarget", "PlanReport", "SearchCost", "SearchPlan", "SearchResult",
           "StageCost", "TuneResult", "default_funnel_steps"]
